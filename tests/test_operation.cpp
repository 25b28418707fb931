#include <processmanager/operation.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

using pm::ProcessOperation;
using pm::RuntimeControlMessage;

TEST(operation, next_holds_the_work_result) {
  auto op = ProcessOperation<int>::from_next(42);
  EXPECT_TRUE(op.is_next());
  EXPECT_FALSE(op.is_control());
  EXPECT_EQ(op.next(), 42);
}

TEST(operation, next_on_a_control_operation_throws_logic_error_naming_the_service) {
  auto op = ProcessOperation<int>::from_control(RuntimeControlMessage::reload(), "db-writer");
  EXPECT_TRUE(op.is_control());
  EXPECT_TRUE(op.control().is_reload());
  try {
    (void)op.next();
    FAIL() << "next() did not throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("db-writer"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("reload"), std::string::npos) << e.what();
  }
}

TEST(operation, control_on_a_work_operation_throws_logic_error) {
  auto op = ProcessOperation<std::string>::from_next("data");
  EXPECT_THROW((void)op.control(), std::logic_error);
  auto v = ProcessOperation<void>::from_next();
  EXPECT_TRUE(v.is_next());
  EXPECT_THROW((void)v.control(), std::logic_error);
}

TEST(operation, void_operation_holds_control) {
  auto op = ProcessOperation<void>::from_control(RuntimeControlMessage::shutdown());
  EXPECT_TRUE(op.is_control());
  EXPECT_FALSE(op.is_next());
  EXPECT_TRUE(op.control().is_shutdown());
}

TEST(operation, a_default_operation_is_empty_and_says_so) {
  ProcessOperation<int> op;
  EXPECT_FALSE(op.is_next());
  EXPECT_FALSE(op.is_control());
  EXPECT_THROW((void)op.next(), std::logic_error);
  EXPECT_THROW((void)op.control(), std::logic_error);
  EXPECT_TRUE(ProcessOperation<void>().is_next());
}

}  // namespace
