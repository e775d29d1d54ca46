// Safetensors checkpoints (the Hugging Face weight format): a reader that memory-maps a file and
// hands out zero-copy CPU tensors, a checkpoint view over a directory (one file, or an index with
// shards), and a writer. The format: an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// data section, to which the offsets are relative. Only F32, F16 and BF16 tensors are supported.
//
// Every problem in a file is a kvbench::Error of one line, "checkpoint: <path>: <problem>", so a
// bad download or a wrong config.json is told apart from a bug at a glance.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kvbench {

// One tensor as its file's header describes it.
struct TensorInfo {
  std::string name;
  at::ScalarType dtype;  // at::kFloat, at::kHalf or at::kBFloat16
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section, as in the header
  std::string file;             // path of the file holding it
};

// One memory-mapped .safetensors file. The header is fully validated in the constructor, so a
// file that constructs can hand out every tensor it lists. The mapping is private and writable:
// torch tensors are mutable, and a write to one lands in a private copy of the page, never in the
// file. Truncating the file on disk while it is mapped makes later reads fault (SIGBUS), as with
// any mmap reader.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  // In header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when the file has no tensor of that name.
  const TensorInfo* find(const std::string& name) const;
  // A CPU tensor viewing the mapping; it keeps the mapping alive after this object is gone. When
  // the data is not aligned for its dtype (the format does not require it), an aligned copy.
  // Tensors viewing the same bytes share them: clone() before writing to one.
  at::Tensor tensor(const std::string& name) const;
  // The header's "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Mapping;

  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  uint64_t data_start_ = 0;  // byte offset of the data section in the file: 8 + N
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;  // name -> index into tensors_
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or model.safetensors.index.json ({"metadata": ...,
// "weight_map": {tensor: shard file}}) with its shards. When both are present the single file
// wins, as in transformers. The whole checkpoint is validated in the constructor: every shard the
// index names exists and is a valid file, and holds every tensor the index maps to it.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& dir);

  // Sorted. For a sharded checkpoint, the tensors of the index's weight map.
  std::vector<std::string> names() const;
  // nullptr when the checkpoint has no tensor of that name.
  const TensorInfo* find(const std::string& name) const;
  // The tensor `name` (see SafetensorsFile::tensor), after checking that it exists and that its
  // shape equals `expected_shape` (what config.json implies), so a mismatched checkpoint fails
  // here with both shapes instead of deep inside a matmul.
  at::Tensor load(const std::string& name, at::IntArrayRef expected_shape) const;
  // Sum of the byte sizes of the tensors in names().
  uint64_t total_bytes() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> file_of_;  // tensor name -> the file holding it
};

// Writes `tensors` (F32, F16 or BF16; any device or layout, written as contiguous CPU copies) in
// the given order as a safetensors file, atomically (temporary file and rename). The header is
// padded with spaces so the data section starts on an 8-byte boundary, as the reference
// implementation does; tensors are not padded, so put those with larger elements first if every
// tensor should be aligned. Names must be unique and not "__metadata__". The whole file is built
// in memory first.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kvbench
