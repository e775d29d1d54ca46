#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/core/jsonl.h"

namespace kvbench {
namespace {

using nlohmann::json;

std::filesystem::path write_jsonl(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::path(::testing::TempDir()) / ("kvbench_jsonl_" + name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// read_jsonl's error for `path` with rows ignored, or "no error".
std::string read_error(const std::filesystem::path& path, const std::string& context = "") {
  try {
    read_jsonl(
        path, [](const json&, int64_t) {}, context);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Jsonl, SkipsBlankLinesAndCountsEveryLine) {
  // Blank: empty, spaces and tabs, a lone CR (a CRLF file); the last row has no newline.
  const auto path = write_jsonl("rows.jsonl",
                                "{\"a\": 1}\n"
                                "\n"
                                "  \t \n"
                                "\r\n"
                                "{\"a\": 2, \"b\": [\"x\"]}\r\n"
                                "{\"a\": 3}");
  std::vector<std::pair<json, int64_t>> rows;
  read_jsonl(path, [&](const json& row, int64_t line) { rows.emplace_back(row, line); });
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].first, json({{"a", 1}}));
  EXPECT_EQ(rows[0].second, 1);
  EXPECT_EQ(rows[1].first, json({{"a", 2}, {"b", {"x"}}}));
  EXPECT_EQ(rows[1].second, 5);
  EXPECT_EQ(rows[2].first, json({{"a", 3}}));
  EXPECT_EQ(rows[2].second, 6);

  int calls = 0;
  read_jsonl(write_jsonl("blank.jsonl", "\n \n"), [&](const json&, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);  // no rows is the caller's to judge
}

TEST(Jsonl, AParseErrorNamesFileLineAndTheProblem) {
  const auto path = write_jsonl("bad.jsonl", "{\"a\": 1}\n\n{\"a\": }\n{\"a\": 4}\n");
  std::vector<int64_t> lines;
  std::string err;
  try {
    read_jsonl(
        path, [&](const json&, int64_t line) { lines.push_back(line); }, "trace_file");
  } catch (const Error& e) {
    err = e.what();
  }
  // "trace_file: <path>:3: not JSON (<the parser's message>)", after the rows before it.
  EXPECT_EQ(err.rfind("trace_file: " + path.string() + ":3: not JSON (", 0), 0u) << err;
  EXPECT_NE(err.find("parse error"), std::string::npos) << err;
  EXPECT_EQ(lines, std::vector<int64_t>{1});
  EXPECT_EQ(jsonl_where(path, 3), path.string() + ":3");

  // No context: the message starts at the place.
  EXPECT_EQ(read_error(path).rfind(path.string() + ":3: not JSON (", 0), 0u) << read_error(path);
}

TEST(Jsonl, ANonObjectLineIsAnError) {
  const auto path = write_jsonl("array.jsonl", "{\"a\": 1}\n[1, 2]\n");
  EXPECT_EQ(read_error(path, "sharegpt_file"),
            "sharegpt_file: " + path.string() + ":2: expected a JSON object, got array");
  const auto number = write_jsonl("number.jsonl", "7\n");
  EXPECT_EQ(read_error(number), number.string() + ":1: expected a JSON object, got number");
}

TEST(Jsonl, AMissingFileIsAnError) {
  const std::filesystem::path path = "/nonexistent/kvbench/rows.jsonl";
  EXPECT_EQ(read_error(path, "output_length: prompts_file"),
            "output_length: prompts_file: cannot read " + path.string());
  EXPECT_EQ(read_error(path), "cannot read " + path.string());
}

// A row nested deeper than any real one is refused while it is parsed: copying or printing it
// would recurse once per level.
TEST(Jsonl, ARowNestedTooDeepIsAnError) {
  const auto path = write_jsonl("deep.jsonl", "{\"a\": 1}\n{\"a\": " + std::string(300000, '[') +
                                                  std::string(300000, ']') + "}\n");
  EXPECT_EQ(read_error(path, "trace_file"),
            "trace_file: " + path.string() + ":2: values nested more than 64 levels deep");
}

TEST(Jsonl, ErrorsFromTheCallbackPassThrough) {
  const auto path = write_jsonl("ok.jsonl", "{\"a\": 1}\n{\"a\": 2}\n");
  try {
    read_jsonl(path, [&](const json& row, int64_t line) {
      KVB_CHECK(row["a"] != 2, "rows: ", jsonl_where(path, line), ": a is 2");
    });
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "rows: " + path.string() + ":2: a is 2");
  }
}

// Every reader words a bad field the same way: missing, or expected/got with the value cut.
TEST(Jsonl, FieldErrorsHaveOneWording) {
  auto message = [](const json& row, const std::string& key) {
    try {
      throw_field_error(row, key, "a string", "f.jsonl:3");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(json{{"a", 1}}, "id"), "f.jsonl:3: \"id\": missing (expected a string)");
  EXPECT_EQ(message(json{{"id", 7}}, "id"), "f.jsonl:3: \"id\": expected a string, got 7");
  const std::string long_value = message(json{{"id", std::vector<int>(100, 1)}}, "id");
  EXPECT_LE(long_value.size(), 100u) << long_value;
  EXPECT_EQ(long_value.substr(long_value.size() - 3), "...");
}

}  // namespace
}  // namespace kvbench
