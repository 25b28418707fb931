#include <processmanager/control.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using pm::ControlKind;
using pm::RuntimeControlMessage;

TEST(control, shutdown_and_reload_have_their_kind) {
  EXPECT_EQ(RuntimeControlMessage::shutdown().kind(), ControlKind::shutdown);
  EXPECT_TRUE(RuntimeControlMessage::shutdown().is_shutdown());
  EXPECT_FALSE(RuntimeControlMessage::shutdown().is_reload());
  EXPECT_EQ(RuntimeControlMessage::reload().kind(), ControlKind::reload);
  EXPECT_TRUE(RuntimeControlMessage::reload().is_reload());
  EXPECT_FALSE(RuntimeControlMessage::reload().is_custom());
  EXPECT_EQ(RuntimeControlMessage::reload().custom_if<int>(), nullptr);
}

TEST(control, custom_payload_is_read_back_only_as_its_exact_type) {
  auto m = RuntimeControlMessage::custom(std::string("rotate-logs"));
  EXPECT_EQ(m.kind(), ControlKind::custom);
  ASSERT_NE(m.custom_if<std::string>(), nullptr);
  EXPECT_EQ(*m.custom_if<std::string>(), "rotate-logs");
  EXPECT_EQ(m.custom_if<const char*>(), nullptr);
  EXPECT_EQ(m.custom_if<int>(), nullptr);
}

TEST(control, copies_share_one_immutable_payload) {
  auto a = RuntimeControlMessage::custom(std::vector<int>{1, 2, 3});
  auto b = a;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the point
  EXPECT_EQ(a.custom_if<std::vector<int>>(), b.custom_if<std::vector<int>>());
  EXPECT_EQ(b.custom_if<std::vector<int>>()->size(), 3u);
}

TEST(control, a_default_message_is_shutdown) {
  RuntimeControlMessage m;
  EXPECT_TRUE(m.is_shutdown());
  EXPECT_EQ(m.custom_if<int>(), nullptr);
}

TEST(control, kinds_have_readable_names) {
  EXPECT_EQ(pm::to_string(ControlKind::shutdown), "shutdown");
  EXPECT_EQ(pm::to_string(ControlKind::reload), "reload");
  EXPECT_EQ(pm::to_string(ControlKind::custom), "custom");
}

}  // namespace
