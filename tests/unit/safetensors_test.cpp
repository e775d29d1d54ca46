// The safetensors reader and writer: bit-exact round trips, files built byte by byte (so the
// reader is not only checked against our own writer), zero-copy and copy paths, sharded
// checkpoints, and one test per kind of corrupt file, each expecting a one-line error that names
// the file and the problem.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/model/safetensors.h"

namespace kvbench {
namespace {

namespace fs = std::filesystem;

// A fresh scratch directory per test, removed afterwards.
class ScratchDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("kvbench_test_" + std::string(info->test_suite_name()) +
                                        "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
};

using SafetensorsRoundTrip = ScratchDir;
using SafetensorsReader = ScratchDir;
using SafetensorsWriter = ScratchDir;
using SafetensorsCorrupt = ScratchDir;
using SafetensorsSharded = ScratchDir;

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file written by hand: the length field (the header's size unless `length` says
// otherwise), the header text, then the data section.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               std::optional<uint64_t> length = std::nullopt) {
  std::ofstream out(path, std::ios::binary);
  out << le64(length.value_or(header.size())) << header << data;
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string bytes_of(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (c.numel() == 0) return "";
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

// Random values, never all zero, in any of the supported dtypes.
at::Tensor random_tensor(at::IntArrayRef shape, at::ScalarType dtype, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat).mul_(3).to(dtype);
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// Pads `header` with spaces until the data section (8 + header size) is `remainder` mod 8.
std::string pad_header(std::string header, size_t remainder) {
  while ((8 + header.size()) % 8 != remainder) header += ' ';
  return header;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a kvbench::Error";
  return "";
}

// One line, "checkpoint: <path>: ..." and every part somewhere in it.
::testing::AssertionResult is_error_line(const std::string& message, const fs::path& path,
                                         const std::vector<std::string>& parts) {
  if (message.find('\n') != std::string::npos) {
    return ::testing::AssertionFailure() << "more than one line: " << message;
  }
  const std::string prefix = "checkpoint: " + path.string() + ": ";
  if (message.rfind(prefix, 0) != 0) {
    return ::testing::AssertionFailure() << "does not start with \"" << prefix << "\": " << message;
  }
  for (const auto& part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure() << "lacks \"" << part << "\": " << message;
    }
  }
  return ::testing::AssertionSuccess();
}

std::string open_error(const fs::path& path) {
  return error_of([&] { SafetensorsFile file(path.string()); });
}

// A file with one tensor entry `entry` (the JSON object text) over `data`.
std::string error_for_entry(const fs::path& path, const std::string& entry,
                            const std::string& data) {
  write_raw(path, R"({"t":)" + entry + "}", data);
  return open_error(path);
}

TEST_F(SafetensorsRoundTrip, AllDtypesAndShapesAreBitExact) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32.matrix", random_tensor({3, 5}, at::kFloat, 1)},
      {"f16.cube", random_tensor({2, 3, 4}, at::kHalf, 2)},  // 48 bytes: later data stays aligned
      {"scalar", random_tensor({}, at::kFloat, 3)},
      {"bf16.vector", random_tensor({7}, at::kBFloat16, 4)},  // 14 bytes: misaligns what follows
      {"empty", random_tensor({0, 4}, at::kBFloat16, 5)},
      {"f32.after_odd", random_tensor({2, 2}, at::kFloat, 6)},
      {"transposed", random_tensor({4, 3}, at::kHalf, 7).t()},  // written as a contiguous copy
  };
  const fs::path path = dir_ / "model.safetensors";
  write_safetensors(path.string(), tensors);

  // The header is padded so the data section starts on an 8-byte boundary.
  const std::string raw = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);

  SafetensorsFile file(path.string());
  ASSERT_EQ(file.tensors().size(), tensors.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, want] = tensors[i];
    SCOPED_TRACE(name);
    const TensorInfo& info = file.tensors()[i];  // in the order given to the writer
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, want.scalar_type());
    EXPECT_EQ(info.shape, want.sizes().vec());
    EXPECT_EQ(info.begin, offset);
    EXPECT_EQ(info.file, path.string());
    offset = info.end;
    at::Tensor got = file.tensor(name);
    EXPECT_EQ(got.scalar_type(), want.scalar_type());
    EXPECT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_EQ(bytes_of(got), bytes_of(want));
    if (want.numel() > 0) {
      EXPECT_TRUE(want.ne(0).any().item<bool>());  // random, not zeros
    }
  }
  EXPECT_EQ(8 + header_len + offset, raw.size());
  EXPECT_EQ(file.find("missing"), nullptr);
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(SafetensorsRoundTrip, Metadata) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "ünïcödé, \"quotes\", a\nnewline"}, {"empty", ""}};
  const fs::path path = dir_ / "meta.safetensors";
  write_safetensors(path.string(), {{"w", random_tensor({2}, at::kFloat, 8)}}, metadata);
  SafetensorsFile file(path.string());
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_EQ(file.tensors().size(), 1u);  // "__metadata__" is not a tensor
  EXPECT_EQ(file.path(), path.string());
}

TEST_F(SafetensorsReader, ReadsHandBuiltFileInHeaderOrderWithoutCopying) {
  // Header order differs from sorted order on purpose; the data section is 8-byte aligned.
  const std::string header =
      pad_header(R"({"zeta":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                 R"("__metadata__":{"format":"pt"},)"
                 R"("alpha":{"dtype":"F16","shape":[3],"data_offsets":[24,30]},)"
                 R"("mid":{"dtype":"BF16","shape":[],"data_offsets":[30,32]}})",
                 0);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(-5, 5);
  std::vector<float> zeta(6);
  for (float& x : zeta) x = uniform(rng);
  std::string data(reinterpret_cast<const char*>(zeta.data()), 24);
  data += random_bytes(8, 10);  // F16 and BF16 bit patterns, compared as bytes
  const fs::path path = dir_ / "hand.safetensors";
  write_raw(path, header, data);

  SafetensorsFile file(path.string());
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.tensors()[0].name, "zeta");
  EXPECT_EQ(file.tensors()[1].name, "alpha");
  EXPECT_EQ(file.tensors()[2].name, "mid");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  const TensorInfo* alpha = file.find("alpha");
  ASSERT_NE(alpha, nullptr);
  EXPECT_EQ(alpha->dtype, at::kHalf);
  EXPECT_EQ(alpha->begin, 24u);
  EXPECT_EQ(alpha->end, 30u);

  at::Tensor z = file.tensor("zeta");
  EXPECT_EQ(z.sizes(), at::IntArrayRef({2, 3}));
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(z.data_ptr<float>()[i], zeta[i]);
  EXPECT_EQ(bytes_of(file.tensor("alpha")), data.substr(24, 6));
  at::Tensor mid = file.tensor("mid");
  EXPECT_EQ(mid.dim(), 0);
  EXPECT_EQ(mid.scalar_type(), at::kBFloat16);
  EXPECT_EQ(bytes_of(mid), data.substr(30, 2));
  // Aligned data is viewed in place: two loads share the bytes.
  EXPECT_EQ(file.tensor("zeta").data_ptr(), z.data_ptr());
}

TEST_F(SafetensorsReader, UnalignedDataIsCopiedToAlignedMemory) {
  // The data section starts at an odd offset, so no tensor is aligned for its dtype.
  const std::string header =
      pad_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"BF16","shape":[2,2],"data_offsets":[16,24]}})",
                 3);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-5, 5);
  std::vector<float> a(4);
  for (float& x : a) x = uniform(rng);
  const std::string data =
      std::string(reinterpret_cast<const char*>(a.data()), 16) + random_bytes(8, 12);
  const fs::path path = dir_ / "odd.safetensors";
  write_raw(path, header, data);

  SafetensorsFile file(path.string());
  at::Tensor got = file.tensor("a");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data_ptr()) % alignof(float), 0u);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(got.data_ptr<float>()[i], a[i]);
  EXPECT_NE(file.tensor("a").data_ptr(), got.data_ptr());  // a copy each time
  at::Tensor b = file.tensor("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data_ptr()) % 2, 0u);
  EXPECT_EQ(b.sizes(), at::IntArrayRef({2, 2}));
  EXPECT_EQ(bytes_of(b), data.substr(16, 8));
}

TEST_F(SafetensorsReader, TensorOutlivesFileObjectAndFile) {
  const at::Tensor want = random_tensor({16, 8}, at::kFloat, 13);
  const fs::path path = dir_ / "model.safetensors";
  write_safetensors(path.string(), {{"w", want}});
  at::Tensor got;
  {
    SafetensorsFile file(path.string());
    got = file.tensor("w");
  }
  fs::remove(path);  // the mapping still holds the file's pages
  EXPECT_EQ(bytes_of(got), bytes_of(want));
  EXPECT_TRUE(at::equal(got * 2, want * 2));  // usable by ordinary ops
}

TEST_F(SafetensorsReader, WritingToATensorNeverReachesTheFile) {
  const at::Tensor want = random_tensor({32}, at::kFloat, 14);
  const fs::path path = dir_ / "model.safetensors";
  write_safetensors(path.string(), {{"w", want}});
  const std::string before = read_bytes(path);
  {
    SafetensorsFile file(path.string());
    file.tensor("w").fill_(42);
  }
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(bytes_of(SafetensorsFile(path.string()).tensor("w")), bytes_of(want));
}

TEST_F(SafetensorsWriter, RejectsUnsupportedDtypesAndDuplicateNames) {
  const fs::path path = dir_ / "bad.safetensors";
  const std::string wrong_dtype = error_of([&] {
    write_safetensors(path.string(), {{"ok", random_tensor({2}, at::kFloat, 15)},
                                      {"d", random_tensor({2}, at::kDouble, 16)}});
  });
  EXPECT_TRUE(is_error_line(wrong_dtype, path, {"'d'", "Double", "supported: F32, F16, BF16"}));
  const at::Tensor t = random_tensor({2}, at::kHalf, 17);
  EXPECT_TRUE(is_error_line(error_of([&] {
                              write_safetensors(path.string(), {{"x", t}, {"x", t}});
                            }),
                            path, {"'x'", "twice"}));
  EXPECT_TRUE(is_error_line(error_of([&] {
                              write_safetensors(path.string(), {{"__metadata__", t}});
                            }),
                            path, {"__metadata__"}));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir_));  // no temporary left behind
}

// --- Corrupt files: one test per problem --------------------------------------------------------

TEST_F(SafetensorsCorrupt, TruncatedData) {
  const fs::path path = dir_ / "model.safetensors";
  write_safetensors(path.string(), {{"w", random_tensor({4, 4}, at::kFloat, 18)}});
  fs::resize_file(path, fs::file_size(path) - 5);  // 64 bytes of data, 59 left
  EXPECT_TRUE(is_error_line(open_error(path), path,
                            {"'w'", "offsets out of range", "[0, 64]", "59 bytes"}));
}

TEST_F(SafetensorsCorrupt, HeaderLengthBeyondFile) {
  const fs::path path = dir_ / "model.safetensors";
  write_raw(path, "{}", "", 1000);  // a 10-byte file: 2 bytes after the length field
  EXPECT_TRUE(is_error_line(open_error(path), path, {"header length 1000", "only 2 bytes"}));
  write_raw(path, "{}", "", uint64_t{1} << 40);
  EXPECT_TRUE(is_error_line(open_error(path), path,
                            {"header length 1099511627776", "over the limit of 100000000"}));
}

// A clone made without git-lfs: the pointer file, said as such (read as a header length, its
// first 8 bytes are a number past the limit).
TEST_F(SafetensorsCorrupt, GitLfsPointer) {
  const fs::path path = dir_ / "model.safetensors";
  std::ofstream(path, std::ios::binary)
      << "version https://git-lfs.github.com/spec/v1\noid sha256:" << std::string(64, 'a')
      << "\nsize 16060522496\n";
  EXPECT_TRUE(is_error_line(open_error(path), path, {"Git LFS pointer", "git lfs pull"}));
}

TEST_F(SafetensorsCorrupt, ShorterThanLengthField) {
  const fs::path path = dir_ / "model.safetensors";
  std::ofstream(path, std::ios::binary) << std::string("\x02\0\0\0\0", 5);
  EXPECT_TRUE(is_error_line(open_error(path), path, {"file is 5 bytes", "8-byte header length"}));
  std::ofstream(path, std::ios::binary).close();
  EXPECT_TRUE(is_error_line(open_error(path), path, {"file is 0 bytes"}));
}

TEST_F(SafetensorsCorrupt, HeaderNotJson) {
  const fs::path path = dir_ / "model.safetensors";
  write_raw(path, "{\"w\": {\"dtype\"\n", "");
  EXPECT_TRUE(is_error_line(open_error(path), path, {"header is not valid JSON"}));
  // The parser's words, not its "[json.exception.parse_error.101]" tag.
  EXPECT_EQ(open_error(path).find("json.exception"), std::string::npos) << open_error(path);
  write_raw(path, "", "");
  EXPECT_TRUE(is_error_line(open_error(path), path, {"header is not valid JSON"}));
  write_raw(path, "[1, 2]", "");
  EXPECT_TRUE(is_error_line(open_error(path), path, {"header is not a JSON object but array"}));
}

// Brackets nested 300,000 deep (600 KB, under the header limit): printing or copying such a
// value recurses once per level, so it is refused while parsing, before it overflows the stack.
TEST_F(SafetensorsCorrupt, HeaderNestedTooDeep) {
  const fs::path path = dir_ / "model.safetensors";
  const size_t depth = 300000;
  write_raw(path,
            R"({"w":{"dtype":"F32","shape":[)" + std::string(depth, '[') + std::string(depth, ']') +
                R"(],"data_offsets":[0,4]}})",
            random_bytes(4, 23));
  EXPECT_TRUE(is_error_line(open_error(path), path, {"nested more than 64 levels deep"}));
  // The index of a sharded checkpoint likewise.
  fs::remove(path);
  const fs::path index = dir_ / "model.safetensors.index.json";
  std::ofstream(index) << R"({"weight_map": )" << std::string(depth, '[') << std::string(depth, ']')
                       << "}";
  EXPECT_TRUE(is_error_line(error_of([&] { SafetensorsCheckpoint c(dir_.string()); }), index,
                            {"nested more than 64 levels deep"}));
}

TEST_F(SafetensorsCorrupt, OffsetsOutOfRange) {
  const fs::path path = dir_ / "model.safetensors";
  const std::string message = error_for_entry(
      path, R"({"dtype":"F32","shape":[8],"data_offsets":[0,32]})", random_bytes(16, 19));
  EXPECT_TRUE(
      is_error_line(message, path, {"tensor 't'", "offsets out of range", "[0, 32]", "16 bytes"}));
}

TEST_F(SafetensorsCorrupt, OverlappingOffsets) {
  const fs::path path = dir_ / "model.safetensors";
  write_raw(path,
            R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("second":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            random_bytes(24, 20));
  EXPECT_TRUE(is_error_line(open_error(path), path,
                            {"'first'", "[0, 16]", "'second'", "[8, 24]", "overlap"}));
}

// The data section must be tiled by its tensors, as the safetensors library requires.
TEST_F(SafetensorsCorrupt, BytesNoTensorOwns) {
  const fs::path path = dir_ / "model.safetensors";
  write_raw(path,
            R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("second":{"dtype":"F32","shape":[4],"data_offsets":[24,40]}})",
            random_bytes(40, 30));
  EXPECT_TRUE(is_error_line(
      open_error(path), path,
      {"bytes [16, 24) of the data section belong to no tensor", "(next: 'second')"}));
  write_raw(path, R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            random_bytes(24, 31));
  EXPECT_TRUE(is_error_line(open_error(path), path, {"bytes [0, 8)", "(next: 'first')"}));
  write_raw(path, R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
            random_bytes(20, 32));
  EXPECT_TRUE(is_error_line(
      open_error(path), path,
      {"bytes [16, 20) of the data section belong to no tensor", "after the last tensor's data"}));
  write_raw(path, "{}", "junk");
  EXPECT_TRUE(is_error_line(open_error(path), path, {"bytes [0, 4)", "the header lists none"}));
  // An empty tensor counts too: at an offset inside another tensor's data, as the library
  // refuses it; and one past the data leaves a gap.
  write_raw(path,
            R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
            R"("e":{"dtype":"F32","shape":[3,0],"data_offsets":[4,4]}})",
            random_bytes(8, 33));
  EXPECT_TRUE(is_error_line(open_error(path), path,
                            {"tensor 'e' (data_offsets [4, 4]) starts inside the data"}));
}

TEST_F(SafetensorsCorrupt, ByteLengthDoesNotMatchShape) {
  const fs::path path = dir_ / "model.safetensors";
  const std::string message = error_for_entry(
      path, R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,12]})", random_bytes(12, 21));
  EXPECT_TRUE(
      is_error_line(message, path, {"tensor 't'", "has 12 bytes", "shape [2, 2] of F32 needs 16"}));
}

TEST_F(SafetensorsCorrupt, UnsupportedDtype) {
  const fs::path path = dir_ / "model.safetensors";
  const std::string message = error_for_entry(
      path, R"({"dtype":"F64","shape":[2],"data_offsets":[0,16]})", random_bytes(16, 22));
  EXPECT_TRUE(
      is_error_line(message, path, {"tensor 't' has dtype F64; supported: F32, F16, BF16"}));
}

TEST_F(SafetensorsCorrupt, UnknownDtype) {
  const fs::path path = dir_ / "model.safetensors";
  const std::string message = error_for_entry(
      path, R"({"dtype":"F42","shape":[2],"data_offsets":[0,8]})", random_bytes(8, 23));
  EXPECT_TRUE(is_error_line(message, path,
                            {"tensor 't' has unknown dtype 'F42'; supported: F32, F16, BF16"}));
}

TEST_F(SafetensorsCorrupt, MalformedEntries) {
  const fs::path path = dir_ / "model.safetensors";
  const std::string data = random_bytes(16, 24);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"shape":[4],"data_offsets":[0,16]})", "has no \"dtype\""},
      {R"({"dtype":"F32","data_offsets":[0,16]})", "has no \"shape\""},
      {R"({"dtype":"F32","shape":[4]})", "has no \"data_offsets\""},
      {R"([1, 2])", "entry is not an object but array"},
      {R"({"dtype":32,"shape":[4],"data_offsets":[0,16]})", "\"dtype\" is not a string"},
      {R"({"dtype":"F32","shape":"4","data_offsets":[0,16]})", "\"shape\" is not an array"},
      {R"({"dtype":"F32","shape":[4.5],"data_offsets":[0,16]})", "not an integer"},
      {R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})", "negative dimension -4"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[16]})", "\"data_offsets\" is not two"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[-1,15]})", "\"data_offsets\" is not two"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[16,0]})", "[16, 0] with begin after end"},
      {R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]})", "too large"},
  };
  for (const auto& [entry, problem] : cases) {
    SCOPED_TRACE(entry);
    EXPECT_TRUE(is_error_line(error_for_entry(path, entry, data), path, {"tensor 't'", problem}));
  }
  write_raw(path,
            R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            data);
  EXPECT_TRUE(is_error_line(open_error(path), path, {"'t' more than once"}));
  write_raw(path, R"({"__metadata__":{"format":1}})", "");
  EXPECT_TRUE(is_error_line(open_error(path), path, {"\"__metadata__\"", "'format'"}));
}

TEST_F(SafetensorsCorrupt, EmptyTensorsAndEmptyFilesAreValid) {
  const fs::path path = dir_ / "model.safetensors";
  // Zero-length ranges at the ends of others' (where the library's tiling puts them).
  write_raw(path,
            R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
            R"("e":{"dtype":"F32","shape":[3,0],"data_offsets":[8,8]},)"
            R"("z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
            random_bytes(8, 25));
  SafetensorsFile file(path.string());
  EXPECT_EQ(file.tensor("e").sizes(), at::IntArrayRef({3, 0}));
  write_raw(path, "{}", "");
  EXPECT_TRUE(SafetensorsFile(path.string()).tensors().empty());
}

// --- Checkpoint directories
// -----------------------------------------------------------------------

// Two shards and an index; returns the tensors by name.
std::map<std::string, at::Tensor> write_sharded(const fs::path& dir) {
  std::map<std::string, at::Tensor> all = {
      {"model.embed_tokens.weight", random_tensor({16, 8}, at::kBFloat16, 26)},
      {"model.layers.0.self_attn.q_proj.weight", random_tensor({8, 8}, at::kBFloat16, 27)},
      {"model.layers.1.self_attn.q_proj.weight", random_tensor({8, 8}, at::kBFloat16, 28)},
      {"model.norm.weight", random_tensor({8}, at::kFloat, 29)},
  };
  const std::string shard1 = "model-00001-of-00002.safetensors";
  const std::string shard2 = "model-00002-of-00002.safetensors";
  write_safetensors(
      (dir / shard1).string(),
      {{"model.layers.0.self_attn.q_proj.weight", all["model.layers.0.self_attn.q_proj.weight"]},
       {"model.embed_tokens.weight", all["model.embed_tokens.weight"]}},
      {{"format", "pt"}});
  write_safetensors(
      (dir / shard2).string(),
      {{"model.layers.1.self_attn.q_proj.weight", all["model.layers.1.self_attn.q_proj.weight"]},
       {"model.norm.weight", all["model.norm.weight"]}},
      {{"format", "pt"}});
  std::ofstream(dir / "model.safetensors.index.json") << R"({
  "metadata": {"total_size": 544},
  "weight_map": {
    "model.embed_tokens.weight": ")" + shard1 + R"(",
    "model.layers.0.self_attn.q_proj.weight": ")" + shard1 + R"(",
    "model.layers.1.self_attn.q_proj.weight": ")" + shard2 + R"(",
    "model.norm.weight": ")" + shard2 + R"("
  }
})";
  return all;
}

TEST_F(SafetensorsSharded, LoadsEveryTensorFromItsShard) {
  const auto all = write_sharded(dir_);
  SafetensorsCheckpoint checkpoint(dir_.string());
  EXPECT_EQ(checkpoint.names(),
            std::vector<std::string>(
                {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"}));
  EXPECT_EQ(checkpoint.total_bytes(), 16u * 8 * 2 + 8 * 8 * 2 * 2 + 8 * 4);
  EXPECT_EQ(checkpoint.find("model.norm.weight")->file,
            (dir_ / "model-00002-of-00002.safetensors").string());
  EXPECT_EQ(checkpoint.find("lm_head.weight"), nullptr);
  for (const auto& [name, want] : all) {
    SCOPED_TRACE(name);
    at::Tensor got = checkpoint.load(name, want.sizes());
    EXPECT_EQ(got.scalar_type(), want.scalar_type());
    EXPECT_EQ(bytes_of(got), bytes_of(want));
  }
}

TEST_F(SafetensorsSharded, SingleFileCheckpoint) {
  const at::Tensor w = random_tensor({4, 2}, at::kHalf, 30);
  write_safetensors((dir_ / "model.safetensors").string(), {{"b", w}, {"a", w}});
  SafetensorsCheckpoint checkpoint(dir_.string());
  EXPECT_EQ(checkpoint.names(), std::vector<std::string>({"a", "b"}));
  EXPECT_EQ(checkpoint.total_bytes(), 32u);
  EXPECT_EQ(bytes_of(checkpoint.load("a", {4, 2})), bytes_of(w));
}

TEST_F(SafetensorsSharded, NoCheckpointFiles) {
  EXPECT_TRUE(is_error_line(error_of([&] { SafetensorsCheckpoint c(dir_.string()); }), dir_,
                            {"neither model.safetensors nor model.safetensors.index.json"}));
}

TEST_F(SafetensorsSharded, MissingShard) {
  write_sharded(dir_);
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  const fs::path index = dir_ / "model.safetensors.index.json";
  EXPECT_TRUE(is_error_line(error_of([&] { SafetensorsCheckpoint c(dir_.string()); }), index,
                            {"shard 'model-00002-of-00002.safetensors'", "does not exist"}));
}

TEST_F(SafetensorsSharded, TensorInIndexAbsentFromShard) {
  write_sharded(dir_);
  const fs::path shard = dir_ / "model-00002-of-00002.safetensors";
  write_safetensors(shard.string(), {{"model.norm.weight", random_tensor({8}, at::kFloat, 31)}});
  const fs::path index = dir_ / "model.safetensors.index.json";
  EXPECT_TRUE(is_error_line(
      error_of([&] { SafetensorsCheckpoint c(dir_.string()); }), shard,
      {"tensor 'model.layers.1.self_attn.q_proj.weight' is not in this shard", index.string()}));
}

// A tensor a shard holds but the index does not map is named as such, not as absent.
TEST_F(SafetensorsSharded, ATensorTheIndexDoesNotMap) {
  write_sharded(dir_);
  std::ofstream(dir_ / "model.safetensors.index.json") << R"({"weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors"}})";
  SafetensorsCheckpoint checkpoint(dir_.string());
  EXPECT_TRUE(is_error_line(error_of([&] { checkpoint.load("model.norm.weight", {8}); }), dir_,
                            {"tensor 'model.norm.weight' is in", "model-00002-of-00002.safetensors",
                             "weight_map does not list it"}));
}

// A symbolic link whose target is gone (a Hugging Face cache after its blobs were removed).
TEST_F(SafetensorsSharded, ADanglingSymlinkIsNamed) {
  fs::create_symlink(dir_ / "blobs" / "0123abcd", dir_ / "model.safetensors");
  EXPECT_TRUE(is_error_line(error_of([&] { SafetensorsCheckpoint c(dir_.string()); }),
                            dir_ / "model.safetensors",
                            {"a symbolic link to", "0123abcd", "does not exist"}));
  fs::remove(dir_ / "model.safetensors");
  write_sharded(dir_);
  const fs::path shard = dir_ / "model-00002-of-00002.safetensors";
  fs::remove(shard);
  fs::create_symlink(dir_ / "blobs" / "4567", shard);
  EXPECT_TRUE(is_error_line(error_of([&] { SafetensorsCheckpoint c(dir_.string()); }), shard,
                            {"a symbolic link to", "4567"}));
}

TEST_F(SafetensorsSharded, WrongShapeInLoad) {
  const fs::path file = dir_ / "model.safetensors";
  write_safetensors(file.string(), {{"model.layers.0.self_attn.q_proj.weight",
                                     random_tensor({64, 32}, at::kBFloat16, 32)}});
  SafetensorsCheckpoint checkpoint(dir_.string());
  EXPECT_EQ(error_of([&] {
              checkpoint.load("model.layers.0.self_attn.q_proj.weight", {64, 64});
            }),
            "checkpoint: " + file.string() +
                ": tensor 'model.layers.0.self_attn.q_proj.weight' has shape [64, 32], expected "
                "[64, 64] from config.json");
}

TEST_F(SafetensorsSharded, TensorNotFound) {
  write_safetensors((dir_ / "model.safetensors").string(),
                    {{"model.embed_tokens.weight", random_tensor({4, 2}, at::kFloat, 33)}});
  SafetensorsCheckpoint checkpoint(dir_.string());
  EXPECT_EQ(error_of([&] {
              checkpoint.load("lm_head.weight", {4, 2});
            }),
            "checkpoint: " + dir_.string() + ": tensor 'lm_head.weight' not found");
  // A near miss is suggested.
  EXPECT_TRUE(is_error_line(error_of([&] {
                              checkpoint.load("model.embed_token.weight", {4, 2});
                            }),
                            dir_, {"did you mean 'model.embed_tokens.weight'?"}));
}

}  // namespace
}  // namespace kvbench
