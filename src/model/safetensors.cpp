#include "kvbench/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/report/atomic_file.h"

// Tensor bytes are copied between the file and memory as they are; the format is little-endian.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kvbench's safetensors reader and writer assume a little-endian host"
#endif

namespace kvbench {

namespace fs = std::filesystem;
// Ordered, so tensors() keeps header order and the writer keeps the caller's order.
using OrderedJson = nlohmann::ordered_json;

namespace {

// The reference implementation's limit; a larger "length" means this is not a safetensors file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kSupported = "supported: F32, F16, BF16";

std::optional<at::ScalarType> supported_dtype(const std::string& name) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  return std::nullopt;
}

// The spec's other dtypes, so a valid but unsupported file reads differently from garbage.
bool known_dtype(const std::string& name) {
  static const std::set<std::string> kKnown = {
      "BOOL",    "U8",  "I8",  "I16",         "U16",        "I32",     "U32",
      "I64",     "U64", "F64", "F8_E4M3",     "F8_E5M2",    "F8_E8M0", "F6_E2M3",
      "F6_E3M2", "F4",  "C64", "F8_E4M3FNUZ", "F8_E5M2FNUZ"};
  return kKnown.count(name) > 0;
}

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "F32";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    default:
      return nullptr;
  }
}

// 'name' with control characters escaped: names come from the file, and an error stays one line.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

std::string shape_str(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string offsets_str(const TensorInfo& t) {
  return detail::concat("[", t.begin, ", ", t.end, "]");
}

// nlohmann's messages are one line already; this keeps ours so whatever it quotes.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// Parses the header of `where` (a "checkpoint: <path>: " prefix), rejecting duplicate tensor names:
// JSON parsers keep one of them silently, and the other's bytes would go unnoticed.
OrderedJson parse_header(const char* begin, const char* end, const std::string& where) {
  std::vector<std::string> keys;  // top-level keys in file order, duplicates included
  // A header is three levels deep: nesting far past that is refused before anything copies
  // or prints it (json_depth_limit).
  OrderedJson::parser_callback_t collect_keys = [&](int depth, OrderedJson::parse_event_t event,
                                                    OrderedJson& parsed) {
    if (depth > kMaxJsonDepth) throw_nested_too_deep(where + "header");
    if (event == OrderedJson::parse_event_t::key && depth == 1) {
      keys.push_back(parsed.get<std::string>());
    }
    return true;
  };
  OrderedJson header;
  try {
    header = OrderedJson::parse(begin, end, collect_keys);
  } catch (const OrderedJson::exception& e) {
    KVB_CHECK(false, where, "header is not valid JSON: ", one_line(json_error_text(e)));
  }
  KVB_CHECK(header.is_object(), where, "header is not a JSON object but ", header.type_name());
  if (keys.size() != header.size()) {
    std::sort(keys.begin(), keys.end());
    auto dup = std::adjacent_find(keys.begin(), keys.end());
    KVB_CHECK(dup == keys.end(), where, "header lists ", quote(*dup), " more than once");
  }
  return header;
}

// Non-negative integer that fits int64 (shape entries) or uint64 (offsets).
bool is_count(const OrderedJson& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

}  // namespace

// --- SafetensorsFile
// ------------------------------------------------------------------------------

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(void* a, size_t s) : addr(a), size(s) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(addr, size); }
};

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const std::string where = "checkpoint: " + path + ": ";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KVB_CHECK(fd >= 0, where, "cannot open: ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_errno = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd);
    KVB_CHECK(false, where, stat_ok ? "not a regular file" : std::strerror(stat_errno));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    KVB_CHECK(false, where, "file is ", file_size,
              " bytes, shorter than the 8-byte header length; not a safetensors file");
  }
  // Private and writable (see the header); MAP_NORESERVE so the kernel does not count the whole
  // file as potential copy-on-write memory, which could refuse a large checkpoint.
  void* addr =
      ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping holds its own reference to the file
  KVB_CHECK(addr != MAP_FAILED, where, "cannot map ", file_size,
            " bytes: ", std::strerror(map_errno));
  mapping_ = std::make_shared<const Mapping>(addr, file_size);
  const auto* bytes = static_cast<const unsigned char*>(addr);

  // A clone made without git-lfs leaves the pointer file in the weights' place.
  static constexpr char kLfs[] = "version https://git-lfs";
  KVB_CHECK(file_size < sizeof(kLfs) - 1 || std::memcmp(bytes, kLfs, sizeof(kLfs) - 1) != 0, where,
            "a Git LFS pointer, not the weights: fetch them (git lfs pull) in the checkpoint's "
            "repository");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | bytes[i];  // little-endian
  KVB_CHECK(header_len <= kMaxHeaderBytes, where, "header length ", header_len,
            " is over the limit of ", kMaxHeaderBytes, " bytes (the file is ", file_size,
            " bytes); not a safetensors file");
  KVB_CHECK(header_len <= file_size - 8, where, "header length ", header_len,
            " is beyond the end of the file: only ", file_size - 8,
            " bytes follow the length field (truncated file?)");
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - data_start_;
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  const OrderedJson header = parse_header(header_begin, header_begin + header_len, where);

  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    const OrderedJson& entry = item.value();
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      KVB_CHECK(entry.is_object(), where, "\"__metadata__\" is not an object but ",
                entry.type_name());
      for (const auto& kv : entry.items()) {
        KVB_CHECK(kv.value().is_string(), where, "\"__metadata__\" value of ", quote(kv.key()),
                  " is not a string but ", kv.value().type_name());
        metadata_[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    const std::string tensor = "tensor " + quote(name);
    KVB_CHECK(entry.is_object(), where, tensor, ": entry is not an object but ", entry.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      KVB_CHECK(entry.contains(field), where, tensor, " has no \"", field, "\"");
    }
    TensorInfo info;
    info.name = name;
    info.file = path;

    const OrderedJson& dtype = entry["dtype"];
    KVB_CHECK(dtype.is_string(), where, tensor, ": \"dtype\" is not a string but ",
              dtype.type_name());
    const std::string dtype_text = dtype.get<std::string>();
    const std::optional<at::ScalarType> scalar_type = supported_dtype(dtype_text);
    KVB_CHECK(scalar_type, where, tensor,
              known_dtype(dtype_text) ? " has dtype " + dtype_text
                                      : " has unknown dtype " + quote(dtype_text),
              "; ", kSupported);
    info.dtype = *scalar_type;

    const OrderedJson& shape = entry["shape"];
    KVB_CHECK(shape.is_array(), where, tensor, ": \"shape\" is not an array but ",
              shape.type_name());
    for (const OrderedJson& dim : shape) {
      KVB_CHECK(dim.is_number_integer(), where, tensor, ": \"shape\" holds ", dim.type_name(), " ",
                one_line(dim.dump()), ", not an integer");
      KVB_CHECK(is_count(dim), where, tensor, " has negative dimension ", dim.get<int64_t>(),
                " in its shape ", one_line(shape.dump()));
      KVB_CHECK(dim.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), where, tensor,
                " has dimension ", dim.get<uint64_t>(), ", too large");
      info.shape.push_back(dim.get<int64_t>());
    }

    const OrderedJson& offsets = entry["data_offsets"];
    KVB_CHECK(
        offsets.is_array() && offsets.size() == 2 && is_count(offsets[0]) && is_count(offsets[1]),
        where, tensor, ": \"data_offsets\" is not two non-negative integers but ",
        one_line(offsets.dump()));
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    KVB_CHECK(info.begin <= info.end, where, tensor, " has data_offsets ", offsets_str(info),
              " with begin after end");
    KVB_CHECK(info.end <= data_size, where, tensor, " has offsets out of range: data_offsets ",
              offsets_str(info), " but the data section is ", data_size,
              " bytes (truncated file?)");

    uint64_t want = at::elementSize(info.dtype);
    for (int64_t dim : info.shape) {
      KVB_CHECK(!__builtin_mul_overflow(want, static_cast<uint64_t>(dim), &want), where, tensor,
                " has shape ", shape_str(info.shape), ", too large");
    }
    KVB_CHECK(info.end - info.begin == want, where, tensor, " has ", info.end - info.begin,
              " bytes (data_offsets ", offsets_str(info), ") but shape ", shape_str(info.shape),
              " of ", dtype_text, " needs ", want);
    by_name_[name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }

  // Overlapping ranges mean two tensors share bytes: a corrupt or hand-crafted file. Empty
  // ranges hold no bytes and overlap nothing.
  std::vector<const TensorInfo*> by_begin;
  for (const auto& t : tensors_) {
    if (t.end > t.begin) by_begin.push_back(&t);
  }
  std::sort(by_begin.begin(), by_begin.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  const TensorInfo* reach = nullptr;  // among those seen, the one ending last
  for (const TensorInfo* t : by_begin) {
    KVB_CHECK(!reach || t->begin >= reach->end, where, "tensors ", quote(reach->name),
              " (data_offsets ", offsets_str(*reach), ") and ", quote(t->name), " (data_offsets ",
              offsets_str(*t), ") overlap");
    if (!reach || t->end > reach->end) reach = t;
  }
  // As the safetensors library, a data section that its tensors (empty ones too, sorted by
  // offsets) do not tile exactly is refused: bytes no tensor owns are a truncated header or a
  // damaged file.
  std::vector<const TensorInfo*> all;
  for (const auto& t : tensors_) all.push_back(&t);
  std::sort(all.begin(), all.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::make_pair(a->begin, a->end) < std::make_pair(b->begin, b->end);
  });
  uint64_t covered = 0;
  for (const TensorInfo* t : all) {
    KVB_CHECK(t->begin >= covered, where, "tensor ", quote(t->name), " (data_offsets ",
              offsets_str(*t), ") starts inside the data of the tensor before it");
    KVB_CHECK(t->begin == covered, where, "bytes [", covered, ", ", t->begin,
              ") of the data section belong to no tensor (next: ", quote(t->name), ")");
    covered = t->end;
  }
  KVB_CHECK(covered == data_size, where, "bytes [", covered, ", ", data_size,
            ") of the data section belong to no tensor (",
            all.empty() ? "the header lists none" : "after the last tensor's data", ")");
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  KVB_CHECK(info, "checkpoint: ", path_, ": tensor ", quote(name), " not found");
  const auto options = at::TensorOptions().dtype(info->dtype).device(at::kCPU);
  if (info->end == info->begin) return at::empty(info->shape, options);  // numel 0
  char* data = static_cast<char*>(mapping_->addr) + data_start_ + info->begin;
  // The format aligns nothing: the header length and the order of tensors decide where data
  // lands, and libtorch's kernels assume element-aligned pointers.
  if (reinterpret_cast<uintptr_t>(data) % at::elementSize(info->dtype) != 0) {
    at::Tensor copy = at::empty(info->shape, options);
    std::memcpy(copy.data_ptr(), data, info->end - info->begin);
    return copy;
  }
  // The deleter owns a reference to the mapping, so the tensor keeps it mapped.
  return at::from_blob(
      data, info->shape, [mapping = mapping_](void*) {}, options);
}

// --- SafetensorsCheckpoint
// ------------------------------------------------------------------------

namespace {

// A symbolic link whose target is gone (a Hugging Face cache's snapshot after its blobs were
// deleted) reads as no file at all: say what it is.
void check_not_dangling(const fs::path& path) {
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(path, ec)) && !fs::exists(path, ec)) {
    const fs::path target = fs::read_symlink(path, ec);
    KVB_CHECK(false, "checkpoint: ", path.string(), ": a symbolic link to ", target.string(),
              ", which does not exist (an incomplete download, or a cache whose files were "
              "removed)");
  }
}

}  // namespace

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  std::error_code ec;
  KVB_CHECK(fs::is_directory(root, ec), "checkpoint: ", dir, ": not a directory");
  const fs::path single = root / "model.safetensors";
  check_not_dangling(single);
  check_not_dangling(root / "model.safetensors.index.json");
  if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    for (const TensorInfo& t : files_.back()->tensors()) file_of_[t.name] = files_.back().get();
    return;
  }
  const fs::path index_path = root / "model.safetensors.index.json";
  KVB_CHECK(fs::exists(index_path, ec), "checkpoint: ", dir,
            ": has neither model.safetensors nor model.safetensors.index.json");
  const std::string where = "checkpoint: " + index_path.string() + ": ";

  std::ifstream in(index_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  KVB_CHECK(in, where, "cannot read");
  nlohmann::json index;
  try {
    index =
        nlohmann::json::parse(text.str(), json_depth_limit("checkpoint: " + index_path.string()));
  } catch (const nlohmann::json::exception& e) {
    KVB_CHECK(false, where, "not valid JSON: ", one_line(json_error_text(e)));
  }
  KVB_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
            where, "expected an object with a \"weight_map\" object of tensor name -> shard file");

  std::map<std::string, std::vector<std::string>> tensors_of;  // shard file name -> tensors
  for (const auto& item : index["weight_map"].items()) {
    KVB_CHECK(item.value().is_string(), where, "tensor ", quote(item.key()), " maps to a ",
              item.value().type_name(), ", not a shard file name");
    const std::string shard = item.value().get<std::string>();
    // Shards sit beside the index; anything else is a broken (or hostile) index.
    const fs::path shard_path(shard);
    const bool plain = !shard.empty() && shard_path.is_relative() &&
                       std::none_of(shard_path.begin(), shard_path.end(),
                                    [](const fs::path& part) { return part == ".."; });
    KVB_CHECK(plain, where, "tensor ", quote(item.key()), " maps to shard ", quote(shard),
              ", which is not a file in the checkpoint directory");
    tensors_of[shard].push_back(item.key());
  }
  // Every missing shard is a failed or partial download; say so before parsing any of them.
  for (const auto& [shard, tensors] : tensors_of) {
    check_not_dangling(root / shard);
    KVB_CHECK(fs::exists(root / shard, ec), where, "shard ", quote(shard),
              " named in the index does not exist (", tensors.size(), " tensors map to it)");
  }
  for (const auto& [shard, tensors] : tensors_of) {
    files_.push_back(std::make_unique<SafetensorsFile>((root / shard).string()));
    const SafetensorsFile* file = files_.back().get();
    for (const std::string& name : tensors) {
      KVB_CHECK(file->find(name), "checkpoint: ", file->path(), ": tensor ", quote(name),
                " is not in this shard, but ", index_path.string(), " maps it here");
      file_of_[name] = file;
    }
  }
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(file_of_.size());
  for (const auto& [name, file] : file_of_) out.push_back(name);
  return out;  // sorted: file_of_ is a std::map
}

const TensorInfo* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? nullptr : it->second->find(name);
}

at::Tensor SafetensorsCheckpoint::load(const std::string& name,
                                       at::IntArrayRef expected_shape) const {
  const TensorInfo* info = find(name);
  if (!info) {
    // A shard that holds it, though the index does not map it: the index is stale.
    for (const auto& file : files_) {
      KVB_CHECK(!file->find(name), "checkpoint: ", dir_, ": tensor ", quote(name), " is in ",
                file->path(),
                " but model.safetensors.index.json's weight_map does not list it (a stale or "
                "edited index; transformers would not load it either)");
    }
    const std::string near = closest_match(name, names());
    KVB_CHECK(false, "checkpoint: ", dir_, ": tensor ", quote(name), " not found",
              near.empty() ? "" : "; did you mean " + quote(near) + "?");
  }
  KVB_CHECK(expected_shape.equals(info->shape), "checkpoint: ", info->file, ": tensor ",
            quote(name), " has shape ", shape_str(info->shape), ", expected ",
            shape_str(expected_shape), " from config.json");
  return file_of_.at(name)->tensor(name);
}

uint64_t SafetensorsCheckpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : file_of_) {
    const TensorInfo* t = file->find(name);
    total += t->end - t->begin;
  }
  return total;
}

// --- Writer
// ---------------------------------------------------------------------------------------

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = "checkpoint: " + path + ": ";
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  std::vector<at::Tensor> data;  // contiguous CPU copies, in file order
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    KVB_CHECK(name != "__metadata__", where, "a tensor cannot be named \"__metadata__\"");
    KVB_CHECK(seen.insert(name).second, where, "tensor ", quote(name), " is given twice");
    KVB_CHECK(tensor.defined(), where, "tensor ", quote(name), " is undefined");
    const char* dtype = dtype_name(tensor.scalar_type());
    KVB_CHECK(dtype, where, "cannot write tensor ", quote(name), " of dtype ", tensor.scalar_type(),
              "; ", kSupported);
    data.push_back(tensor.cpu().contiguous());
    const uint64_t bytes = data.back().numel() * data.back().element_size();
    header[name] = {{"dtype", dtype},
                    {"shape", data.back().sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const OrderedJson::exception& e) {
    KVB_CHECK(false, where, "tensor names and metadata must be valid UTF-8: ", one_line(e.what()));
  }
  // Spaces are JSON whitespace, so any reader parses the padded header unchanged.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string content;
  content.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) content += static_cast<char>((text.size() >> (8 * i)) & 0xff);
  content += text;
  for (const at::Tensor& t : data) {
    if (t.numel() > 0) {  // an empty tensor may have no data pointer
      content.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
    }
  }
  write_file_atomically(path, content);
}

}  // namespace kvbench
