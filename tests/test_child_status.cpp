// ChildStatus::find: a descendant by its path relative to a status, on
// hand-built snapshots (names with '/', absent children) and a deep chain.
#include <processmanager/lifecycle.hpp>

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace {

pm::ChildStatus node(std::string path, std::vector<pm::ChildStatus> children = {}) {
  pm::ChildStatus s;
  s.path = std::move(path);
  s.children = std::move(children);
  return s;
}

TEST(child_status_find, finds_children_and_grandchildren_by_relative_path) {
  const auto root = node("root", {node("root/web"), node("root/db", {node("root/db/reader"), node("root/db/writer")})});
  ASSERT_NE(root.find("db/writer"), nullptr);
  EXPECT_EQ(root.find("db/writer")->path, "root/db/writer");
  EXPECT_EQ(root.find("db")->path, "root/db");
  EXPECT_EQ(root.find("web")->path, "root/web");
  EXPECT_EQ(root.find(""), &root);
  const auto* db = root.find("db");
  EXPECT_EQ(db->find("reader"), &db->children[0]) << "relative to the status it is called on";
}

TEST(child_status_find, answers_nullptr_for_what_is_not_there) {
  const auto root = node("root", {node("root/db", {node("root/db/writer")})});
  EXPECT_EQ(root.find("nope"), nullptr);
  EXPECT_EQ(root.find("db/nope"), nullptr);
  EXPECT_EQ(root.find("writer"), nullptr) << "a grandchild is not a child";
  EXPECT_EQ(root.find("root/db"), nullptr) << "the path is relative, not full";
  EXPECT_EQ(root.find("d"), nullptr) << "a prefix of a name is not the name";
  EXPECT_EQ(root.find("db/writer/deeper"), nullptr);
}

TEST(child_status_find, a_name_that_holds_a_slash_is_matched_whole_first) {
  const auto root = node("root", {node("root/a", {node("root/a/c")}), node("root/a/b")});
  EXPECT_EQ(root.find("a/b"), &root.children[1]);
  EXPECT_EQ(root.find("a/c"), &root.children[0].children[0]);
}

TEST(child_status_find, walks_a_chain_thousands_deep) {
  constexpr int depth = 5000;
  // Built from the leaf up; each level's path extends its parent's.
  std::vector<std::string> paths{"root"};
  std::string relative;
  for (int i = 0; i < depth; ++i) {
    paths.push_back(std::string(paths.back()).append("/m"));
    relative.append(i == 0 ? "m" : "/m");
  }
  pm::ChildStatus chain = node(paths.back());
  for (int i = depth - 1; i >= 0; --i) {
    pm::ChildStatus up = node(paths[static_cast<std::size_t>(i)]);
    up.children.push_back(std::move(chain));
    chain = std::move(up);
  }
  const pm::ChildStatus* leaf = chain.find(relative);
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(leaf->path, paths.back());
  EXPECT_TRUE(leaf->children.empty());
  EXPECT_EQ(chain.find(relative + "/none"), nullptr);
  // Taken apart from the top, one level at a time: letting the vector
  // destructors recurse is not what this test is about.
  while (!chain.children.empty()) {
    pm::ChildStatus next = std::move(chain.children.front());
    chain = std::move(next);
  }
}

}  // namespace
