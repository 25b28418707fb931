// Status JSON: the document is valid JSON whatever bytes the names and
// error texts hold, and round-trips through status_from_json.
#include <processmanager/status_json.hpp>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <string>

namespace {

const std::string fffd = "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER

pm::ChildStatus leaf(std::string path, std::string error = {}) {
  pm::ChildStatus s;
  s.path = std::move(path);
  s.state = pm::ChildState::failed;
  s.since = std::chrono::system_clock::time_point(std::chrono::microseconds(1'700'000'000'123'456));
  s.last_error = std::move(error);
  return s;
}

TEST(status_json, invalid_utf8_in_names_and_errors_becomes_u_fffd_and_the_document_parses) {
  pm::ChildStatus st = leaf("app");
  st.state = pm::ChildState::running;
  st.children.push_back(leaf("app/stray\xff\xfe"));
  st.children.push_back(leaf("app/truncated\xe2\x82"));
  st.children.push_back(leaf("app/overlong\xc0\xaf"));
  st.children.push_back(leaf("app/surrogate\xed\xa0\x80"));
  st.children.push_back(leaf("app/fine \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "boom \x80 beyond \xf4\x90\x80\x80!"));

  const std::string text = boost::json::serialize(pm::to_json(st));
  boost::json::value doc;
  ASSERT_NO_THROW(doc = boost::json::parse(text)) << text;
  const pm::ChildStatus back = pm::status_from_json(doc);
  ASSERT_EQ(back.children.size(), 5u);
  // One U+FFFD per maximal invalid subsequence (Unicode's recommendation).
  EXPECT_EQ(back.children[0].path, "app/stray" + fffd + fffd);
  EXPECT_EQ(back.children[1].path, "app/truncated" + fffd);
  EXPECT_EQ(back.children[2].path, "app/overlong" + fffd + fffd);
  EXPECT_EQ(back.children[3].path, "app/surrogate" + fffd + fffd + fffd);
  // Valid UTF-8 (2, 3 and 4 bytes) is kept as it is.
  EXPECT_EQ(back.children[4].path, st.children[4].path);
  EXPECT_EQ(back.children[4].last_error, "boom " + fffd + " beyond " + fffd + fffd + fffd + fffd + "!");

  // The repaired status round-trips exactly, and repairs nothing more.
  EXPECT_EQ(pm::status_from_json(pm::to_json(back)), back);
  EXPECT_EQ(boost::json::serialize(pm::to_json(back)), text);
}

TEST(status_json, valid_names_round_trip_unchanged) {
  pm::ChildStatus st = leaf("\xe6\x97\xa5\xe6\x9c\xac/\xd0\xb4\xd0\xb1", "quote \" backslash \\ newline \n tab \t nul");
  st.last_error.push_back('\0');
  st.children.push_back(leaf("\xe6\x97\xa5\xe6\x9c\xac/\xd0\xb4\xd0\xb1/x"));
  const auto text = boost::json::serialize(pm::to_json(st));
  EXPECT_EQ(pm::status_from_json(boost::json::parse(text)), st);
}

}  // namespace
