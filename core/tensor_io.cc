#include "core/tensor_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace adasoftmax {

static_assert(std::endian::native == std::endian::little,
              "tensor_io reads little-endian file data directly into memory");

namespace {

constexpr std::string_view kNpyMagic("\x93NUMPY", 6);

absl::Status Invalid(const std::string& path, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", problem));
}

absl::Status ErrnoError(const std::string& path, absl::string_view what, int err) {
  const std::string message =
      absl::StrCat(path, ": ", what, ": ", std::generic_category().message(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::UnknownError(message);
  }
}

uint64_t ReadLittleEndian(const uint8_t* p, int bytes) {
  uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

// "6625x120"; "scalar" for rank 0.
std::string ShapeString(const std::vector<uint64_t>& shape) {
  return shape.empty() ? "scalar" : absl::StrJoin(shape, "x");
}

// Bytes occupied by a tensor of this shape and dtype; nullopt when that overflows.
std::optional<uint64_t> ByteSize(const std::vector<uint64_t>& shape, DType dtype) {
  uint64_t bytes = ElementBytes(dtype);
  for (uint64_t dim : shape) {
    if (dim == 0) return 0;
  }
  for (uint64_t dim : shape) {
    if (__builtin_mul_overflow(bytes, dim, &bytes)) return std::nullopt;
  }
  return bytes;
}

// An open tensor file, read with pread rather than memory-mapped: a mapping faults with SIGBUS,
// ending the process, when another process truncates the file (as `cp` over it does).
class TensorFile {
 public:
  static absl::StatusOr<std::shared_ptr<const TensorFile>> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(path, "cannot open", errno);
    std::shared_ptr<TensorFile> file(new TensorFile(path, fd));
    if (::fstat(fd, &file->opened_) != 0) return ErrnoError(path, "cannot stat", errno);
    if (!S_ISREG(file->opened_.st_mode)) return Invalid(path, "not a regular file");
    if (file->size() == 0) return Invalid(path, "empty file");
    return file;
  }

  TensorFile(const TensorFile&) = delete;
  TensorFile& operator=(const TensorFile&) = delete;
  ~TensorFile() { ::close(fd_); }

  const std::string& path() const { return path_; }
  size_t size() const { return static_cast<size_t>(opened_.st_size); }

  // Reads [offset, offset + length) into `out`, then checks that the file is still as opened
  // (size and modification time): else, or when it ends sooner now, Aborted("<path>: changed
  // while being read"). REQUIRES: offset + length <= size().
  absl::Status ReadAt(uint64_t offset, size_t length, void* out) const {
    auto* p = static_cast<uint8_t*>(out);
    while (length > 0) {
      const ssize_t got = ::pread(fd_, p, std::min<size_t>(length, size_t{1} << 30), offset);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return ErrnoError(path_, "cannot read", errno);
      if (got == 0) return Changed();
      p += got;
      offset += got;
      length -= got;
    }
    struct stat now;
    if (::fstat(fd_, &now) != 0) return ErrnoError(path_, "cannot stat", errno);
    if (now.st_size != opened_.st_size || now.st_mtim.tv_sec != opened_.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != opened_.st_mtim.tv_nsec) {
      return Changed();
    }
    return absl::OkStatus();
  }

 private:
  TensorFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status Changed() const {
    return absl::AbortedError(absl::StrCat(path_, ": changed while being read"));
  }

  const std::string path_;
  const int fd_;
  struct stat opened_ = {};
};

// A tensor located inside a file: ByteSize(shape, dtype) bytes at `offset`, read into memory
// by ReadData.
struct StoredTensor {
  std::shared_ptr<const TensorFile> file;
  DType dtype = DType::kFloat32;
  std::vector<uint64_t> shape;
  bool fortran_order = false;
  uint64_t offset = 0;
  const uint8_t* data = nullptr;          // set by ReadData
  std::shared_ptr<const void> keepalive;  // owns `data`
  std::string label;  // "tensor 'name': " inside a .safetensors file, else empty
};

// Reads the tensor's data into memory, allocated but not touched beforehand.
absl::Status ReadData(StoredTensor& tensor) {
  const size_t bytes = *ByteSize(tensor.shape, tensor.dtype);  // validated when located
  uint8_t* data = new (std::nothrow) uint8_t[std::max<size_t>(bytes, 1)];
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(tensor.file->path(), ": ", tensor.label,
                                                     "cannot allocate ", bytes, " bytes to read"));
  }
  tensor.keepalive.reset(data, [](const void* p) { delete[] static_cast<const uint8_t*>(p); });
  RETURN_IF_ERROR(tensor.file->ReadAt(tensor.offset, bytes, data));
  tensor.data = data;
  return absl::OkStatus();
}

// Headers longer than this are rejected rather than read (safetensors' own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

// ---------------------------------------------------------------------------------------------
// .npy

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<uint64_t> shape;
};

// Parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (6625, 120), }
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::string& path, std::string_view text) : path_(path), text_(text) {}

  absl::StatusOr<NpyHeader> Parse() {
    NpyHeader header;
    bool have_descr = false, have_fortran_order = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Error("expected '{'");
    SkipSpace();
    while (!Consume('}')) {
      ASSIGN_OR_RETURN(const std::string key, ParseString());
      SkipSpace();
      if (!Consume(':')) return Error("expected ':'");
      SkipSpace();
      if (key == "descr" && !have_descr) {
        if (Peek() != '\'' && Peek() != '"') {
          return Invalid(path_, "unsupported dtype: structured dtypes are not supported");
        }
        ASSIGN_OR_RETURN(header.descr, ParseString());
        have_descr = true;
      } else if (key == "fortran_order" && !have_fortran_order) {
        ASSIGN_OR_RETURN(header.fortran_order, ParseBool());
        have_fortran_order = true;
      } else if (key == "shape" && !have_shape) {
        ASSIGN_OR_RETURN(header.shape, ParseShape());
        have_shape = true;
      } else {
        return Error(absl::StrCat("unexpected or repeated key '", key, "'"));
      }
      SkipSpace();
      if (Consume(',')) {
        SkipSpace();
      } else if (Consume('}')) {
        break;
      } else {
        return Error("expected ',' or '}'");
      }
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected characters after '}'");
    if (!have_descr || !have_fortran_order || !have_shape) {
      return Error("missing one of the keys 'descr', 'fortran_order', 'shape'");
    }
    return header;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return Invalid(path_, absl::StrCat("malformed .npy header: ", what, " at offset ", pos_));
  }

  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  bool Consume(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  // A quoted string without escapes.
  absl::StatusOr<std::string> ParseString() {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return Error("expected a quoted string");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) return Error("unterminated string");
    std::string value(text_.substr(pos_ + 1, end - pos_ - 1));
    if (value.find('\\') != std::string::npos) return Error("escape sequences are not supported");
    pos_ = end + 1;
    return value;
  }

  absl::StatusOr<bool> ParseBool() {
    for (const auto& [word, value] : {std::pair<std::string_view, bool>{"True", true},
                                      std::pair<std::string_view, bool>{"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    return Error("expected True or False");
  }

  // A tuple of non-negative integers: "()", "(7,)", "(3, 4)"; Python 2's "3L" is accepted.
  absl::StatusOr<std::vector<uint64_t>> ParseShape() {
    std::vector<uint64_t> shape;
    if (!Consume('(')) return Error("expected '(' starting the shape");
    SkipSpace();
    while (!Consume(')')) {
      if (Peek() < '0' || Peek() > '9') return Error("expected a dimension");
      uint64_t dim = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        if (__builtin_mul_overflow(dim, 10, &dim) ||
            __builtin_add_overflow(dim, static_cast<uint64_t>(Peek() - '0'), &dim)) {
          return Error("dimension too large");
        }
        ++pos_;
      }
      Consume('L');
      shape.push_back(dim);
      SkipSpace();
      if (Consume(',')) {
        SkipSpace();
      } else if (Consume(')')) {
        break;
      } else {
        return Error("expected ',' or ')' in the shape");
      }
    }
    return shape;
  }

  const std::string& path_;
  std::string_view text_;
  size_t pos_ = 0;
};

// "header says 6625x120 float32 (3180000 bytes)"
std::string HeaderSays(const std::vector<uint64_t>& shape, DType dtype, uint64_t bytes) {
  return absl::StrCat("header says ", ShapeString(shape), " ", DTypeName(dtype), " (", bytes,
                      " bytes)");
}

absl::StatusOr<StoredTensor> LocateNpy(const std::string& path,
                                       std::shared_ptr<const TensorFile> file) {
  const size_t size = file->size();
  uint8_t p[12] = {};  // magic, version and header length
  RETURN_IF_ERROR(file->ReadAt(0, std::min(size, sizeof(p)), p));
  const size_t magic_bytes = std::min(size, kNpyMagic.size());
  if (std::memcmp(p, kNpyMagic.data(), magic_bytes) != 0) {
    return Invalid(path, "not a .npy file (bad magic)");
  }
  if (size < 10)
    return Invalid(path, absl::StrCat("truncated header: the file has ", size, " bytes"));
  const int major = p[6], minor = p[7];
  if (major < 1 || major > 3 || minor != 0) {
    return Invalid(path, absl::StrCat("unsupported .npy version ", major, ".", minor));
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  const size_t prefix = 8 + length_bytes;
  if (size < prefix) {
    return Invalid(path, absl::StrCat("truncated header: the file has ", size, " bytes"));
  }
  const uint64_t header_length = ReadLittleEndian(p + 8, static_cast<int>(length_bytes));
  if (header_length > size - prefix) {
    return Invalid(path, absl::StrCat("truncated header: header length ", header_length,
                                      " exceeds the ", size - prefix, " bytes that follow"));
  }
  if (header_length > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_length, " is too large"));
  }
  std::string text(header_length, '\0');
  RETURN_IF_ERROR(file->ReadAt(prefix, header_length, text.data()));
  ASSIGN_OR_RETURN(NpyHeader header, NpyHeaderParser(path, text).Parse());

  StoredTensor tensor;
  if (header.descr == "<f4") {
    tensor.dtype = DType::kFloat32;
  } else if (header.descr == "<f2") {
    tensor.dtype = DType::kFloat16;
  } else {
    return Invalid(
        path, absl::StrCat("unsupported dtype '", header.descr, "' (supported: '<f4', '<f2')"));
  }
  const std::optional<uint64_t> bytes = ByteSize(header.shape, tensor.dtype);
  if (!bytes) {
    return Invalid(path, absl::StrCat("shape ", ShapeString(header.shape), " is too large"));
  }
  const size_t data_offset = prefix + header_length;
  const uint64_t available = size - data_offset;
  if (available < *bytes) {
    return Invalid(path, absl::StrCat("truncated: ", HeaderSays(header.shape, tensor.dtype, *bytes),
                                      " but only ", available, " data bytes follow"));
  }
  if (available > *bytes) {
    return Invalid(path,
                   absl::StrCat("trailing data: ", HeaderSays(header.shape, tensor.dtype, *bytes),
                                " but ", available, " data bytes follow"));
  }
  tensor.file = std::move(file);
  tensor.shape = std::move(header.shape);
  tensor.fortran_order = header.fortran_order;
  tensor.offset = data_offset;
  return tensor;
}

// ---------------------------------------------------------------------------------------------
// .safetensors

constexpr std::string_view kMetadataKey = "__metadata__";

// Names of the tensors in a parsed header, for error messages: at most 20, then a count.
std::string ListNames(const nlohmann::json& header) {
  std::vector<std::string> names;
  size_t total = 0;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) continue;
    if (++total <= 20) names.push_back(name);
  }
  if (total == 0) return "none";
  std::string list = absl::StrJoin(names, ", ");
  if (total > names.size()) absl::StrAppend(&list, ", ... (", total, " in all)");
  return list;
}

std::optional<uint64_t> UnsignedOrNull(const nlohmann::json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<uint64_t>();
}

// Validates the header entry of tensor `name` and locates its data.
absl::StatusOr<StoredTensor> LocateSafetensorsEntry(const std::string& path,
                                                    std::shared_ptr<const TensorFile> file,
                                                    const std::string& name,
                                                    const nlohmann::json& entry,
                                                    uint64_t data_section, uint64_t data_size) {
  const std::string what = absl::StrCat("tensor '", name, "'");
  auto malformed = [&](absl::string_view problem) {
    return Invalid(path, absl::StrCat("malformed safetensors header: ", what, ": ", problem));
  };
  if (!entry.is_object()) return malformed("entry is not an object");

  StoredTensor tensor;
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) return malformed("no string 'dtype'");
  const std::string& dtype_name = dtype->get_ref<const std::string&>();
  if (dtype_name == "F32") {
    tensor.dtype = DType::kFloat32;
  } else if (dtype_name == "F16") {
    tensor.dtype = DType::kFloat16;
  } else if (dtype_name == "BF16") {
    tensor.dtype = DType::kBFloat16;
  } else {
    return Invalid(path, absl::StrCat(what, ": unsupported dtype '", dtype_name,
                                      "' (supported: F32, F16, BF16)"));
  }

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) return malformed("no array 'shape'");
  for (const nlohmann::json& dim : *shape) {
    const std::optional<uint64_t> value = UnsignedOrNull(dim);
    if (!value) return malformed("'shape' holds a value that is not a non-negative integer");
    tensor.shape.push_back(*value);
  }

  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2) {
    return malformed("no two-element array 'data_offsets'");
  }
  const std::optional<uint64_t> begin = UnsignedOrNull((*offsets)[0]);
  const std::optional<uint64_t> end = UnsignedOrNull((*offsets)[1]);
  if (!begin || !end || *begin > *end) return malformed("invalid 'data_offsets'");
  const std::string offsets_text = absl::StrCat("data_offsets [", *begin, ", ", *end, "]");
  if (*end > data_size) {
    return Invalid(path, absl::StrCat("truncated: ", what, " has ", offsets_text,
                                      " but the data section holds only ", data_size, " bytes"));
  }
  const std::optional<uint64_t> bytes = ByteSize(tensor.shape, tensor.dtype);
  if (!bytes) {
    return Invalid(path,
                   absl::StrCat(what, ": shape ", ShapeString(tensor.shape), " is too large"));
  }
  if (*end - *begin != *bytes) {
    return Invalid(
        path, absl::StrCat(what, ": ", offsets_text, " span ", *end - *begin, " bytes but shape ",
                           ShapeString(tensor.shape), " ", dtype_name, " needs ", *bytes));
  }
  tensor.file = std::move(file);
  tensor.offset = data_section + *begin;
  tensor.label = what + ": ";
  return tensor;
}

absl::StatusOr<StoredTensor> LocateSafetensors(const std::string& path,
                                               std::shared_ptr<const TensorFile> file,
                                               const std::string& tensor_name) {
  const size_t size = file->size();
  if (size < 8) {
    return Invalid(path, absl::StrCat("truncated header: the file has ", size,
                                      " bytes, fewer than the 8-byte header length"));
  }
  uint8_t length[8];
  RETURN_IF_ERROR(file->ReadAt(0, 8, length));
  const uint64_t header_length = ReadLittleEndian(length, 8);
  if (header_length > size - 8) {
    return Invalid(path, absl::StrCat("truncated header: header length ", header_length,
                                      " exceeds the ", size - 8, " bytes that follow"));
  }
  if (header_length > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_length, " is too large"));
  }
  std::string text(header_length, '\0');
  RETURN_IF_ERROR(file->ReadAt(8, header_length, text.data()));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception& e) {  // Only allocation failures are expected here.
    return Invalid(path, absl::StrCat("malformed safetensors header: ", e.what()));
  }
  if (header.is_discarded()) return Invalid(path, "malformed safetensors header: invalid JSON");
  if (!header.is_object()) return Invalid(path, "malformed safetensors header: not a JSON object");

  std::string name = tensor_name;
  if (name.empty()) {
    size_t count = 0;
    for (const auto& [key, value] : header.items()) {
      if (key == kMetadataKey) continue;
      ++count;
      name = key;
    }
    if (count == 0) return Invalid(path, "the file holds no tensors");
    if (count > 1) {
      return Invalid(path, absl::StrCat("the file holds ", count, " tensors (", ListNames(header),
                                        "); name the one to read"));
    }
  }
  const auto entry = header.find(name);
  if (name == kMetadataKey || entry == header.end()) {
    return absl::NotFoundError(
        absl::StrCat(path, ": no tensor '", name, "' (available: ", ListNames(header), ")"));
  }
  return LocateSafetensorsEntry(path, std::move(file), name, *entry, 8 + header_length,
                                size - 8 - header_length);
}

// ---------------------------------------------------------------------------------------------
// Shared: open, convert, validate.

absl::StatusOr<StoredTensor> OpenTensor(const std::string& path, const std::string& tensor) {
  const bool npy = absl::EndsWith(path, ".npy");
  if (!npy && !absl::EndsWith(path, ".safetensors")) {
    return Invalid(path, "unsupported file type (expected a .npy or .safetensors file)");
  }
  if (npy && !tensor.empty()) {
    return Invalid(path, absl::StrCat(".npy files hold one unnamed tensor, but tensor '", tensor,
                                      "' was requested"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const TensorFile> file, TensorFile::Open(path));
  if (npy) return LocateNpy(path, std::move(file));
  return LocateSafetensors(path, std::move(file), tensor);
}

// Reads element k's bits (unaligned data allowed).
uint32_t BitsAt(DType dtype, const uint8_t* data, size_t k) {
  if (dtype == DType::kFloat32) {
    uint32_t bits;
    std::memcpy(&bits, data + 4 * k, 4);
    return bits;
  }
  uint16_t bits;
  std::memcpy(&bits, data + 2 * k, 2);
  return bits;
}

// Checks that every value of the rows x cols tensor is finite; the error names the first bad
// element in storage order.
absl::Status CheckFinite(const std::string& path, const StoredTensor& tensor, size_t rows,
                         size_t cols, Layout layout, bool is_vector) {
  const uint32_t exponent = tensor.dtype == DType::kFloat32   ? 0x7f800000u
                            : tensor.dtype == DType::kFloat16 ? 0x7c00u
                                                              : 0x7f80u;
  const size_t count = rows * cols;
  constexpr size_t kBlock = 4096;
  for (size_t start = 0; start < count; start += kBlock) {
    const size_t stop = std::min(count, start + kBlock);
    // Branch-free scan of the block, then locate.
    auto any_bad = [&](auto word) {
      bool bad = false;
      for (size_t k = start; k < stop; ++k) {
        std::memcpy(&word, tensor.data + k * sizeof(word), sizeof(word));
        bad |= (word & exponent) == exponent;
      }
      return bad;
    };
    if (!(ElementBytes(tensor.dtype) == 4 ? any_bad(uint32_t{}) : any_bad(uint16_t{}))) continue;
    size_t k = start;
    while ((BitsAt(tensor.dtype, tensor.data, k) & exponent) != exponent) ++k;
    std::string where;
    if (is_vector) {
      where = absl::StrCat("element ", k);
    } else {
      const bool row_major = layout == Layout::kRowMajor;
      const size_t row = row_major ? k / cols : k % rows;
      const size_t col = row_major ? k % cols : k / rows;
      where = absl::StrCat("row ", row, ", column ", col);
    }
    return Invalid(path, absl::StrCat(tensor.label, "non-finite value ",
                                      WidenAt(tensor.dtype, tensor.data, k), " at ", where));
  }
  return absl::OkStatus();
}

// The stored data as a float32 rows x cols matrix in `layout` (which must match the storage
// order): a view of the data read for float32, an owned decoded copy otherwise.
absl::StatusOr<Matrix> ToMatrix(const std::string& path, const StoredTensor& tensor, size_t rows,
                                size_t cols, Layout layout, bool is_vector) {
  RETURN_IF_ERROR(CheckFinite(path, tensor, rows, cols, layout, is_vector));
  if (tensor.dtype == DType::kFloat32) {  // ReadData's buffer is aligned for floats
    return Matrix::View(reinterpret_cast<const float*>(tensor.data), rows, cols, layout,
                        tensor.keepalive);
  }
  Matrix m = Matrix::Owned(rows, cols, layout);
  float* out = m.mutable_data();
  for (size_t k = 0; k < m.size(); ++k) out[k] = WidenAt(tensor.dtype, tensor.data, k);
  return m;
}

// Opens a rank-2 tensor with nonzero dimensions.
absl::StatusOr<StoredTensor> OpenMatrixTensor(const std::string& path, std::string_view tensor) {
  ASSIGN_OR_RETURN(StoredTensor stored, OpenTensor(path, std::string(tensor)));
  const std::vector<uint64_t>& shape = stored.shape;
  if (shape.size() != 2) {
    return Invalid(
        path, absl::StrCat(stored.label, "wrong rank: expected a matrix (rank 2) but the shape is ",
                           ShapeString(shape), " (rank ", shape.size(), ")"));
  }
  if (shape[0] == 0 || shape[1] == 0) {
    return Invalid(
        path, absl::StrCat(stored.label, "zero-sized dimension in shape ", ShapeString(shape)));
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------
// Writing.

// Writes the concatenation of `parts` to `path`, replacing any existing file.
absl::Status WriteFile(const std::string& path, absl::Span<const std::string_view> parts) {
  std::FILE* f = std::fopen(path.c_str(), "wbe");
  if (f == nullptr) return ErrnoError(path, "cannot open for writing", errno);
  for (std::string_view part : parts) {
    if (!part.empty() && std::fwrite(part.data(), 1, part.size(), f) != part.size()) {
      const int err = errno;
      std::fclose(f);
      return ErrnoError(path, "write failed", err);
    }
  }
  if (std::fclose(f) != 0) return ErrnoError(path, "write failed", errno);
  return absl::OkStatus();
}

std::string_view FloatBytes(const float* data, size_t count) {
  return count == 0 ? std::string_view()
                    : std::string_view(reinterpret_cast<const char*>(data), count * sizeof(float));
}

absl::Status WriteNpyData(const std::string& path, absl::string_view shape, bool fortran_order,
                          const float* data, size_t count) {
  std::string dict =
      absl::StrCat("{'descr': '<f4', 'fortran_order': ", fortran_order ? "True" : "False",
                   ", 'shape': ", shape, ", }");
  constexpr size_t kPrefix = 10;  // magic, version, 2-byte header length
  const size_t unpadded = kPrefix + dict.size() + 1;
  dict.append((unpadded + 63) / 64 * 64 - unpadded, ' ');
  dict.push_back('\n');
  if (dict.size() > 0xffff) return Invalid(path, "npy header too long");
  const char prefix[kPrefix] = {'\x93',
                                'N',
                                'U',
                                'M',
                                'P',
                                'Y',
                                1,
                                0,
                                static_cast<char>(dict.size() & 0xff),
                                static_cast<char>(dict.size() >> 8)};
  return WriteFile(path, {std::string_view(prefix, kPrefix), dict, FloatBytes(data, count)});
}

}  // namespace

absl::StatusOr<LoadedMatrix> ReadMatrix(const std::string& path, std::string_view tensor) {
  ASSIGN_OR_RETURN(StoredTensor stored, OpenMatrixTensor(path, tensor));
  RETURN_IF_ERROR(ReadData(stored));
  const Layout layout = stored.fortran_order ? Layout::kColMajor : Layout::kRowMajor;
  ASSIGN_OR_RETURN(Matrix matrix, ToMatrix(path, stored, stored.shape[0], stored.shape[1], layout,
                                           /*is_vector=*/false));
  return LoadedMatrix{std::move(matrix), DTypeName(stored.dtype)};
}

absl::StatusOr<RawMatrix> ReadRawMatrix(
    const std::string& path, std::string_view tensor,
    const std::function<absl::Status(const RawMatrix&)>& admit) {
  ASSIGN_OR_RETURN(StoredTensor stored, OpenMatrixTensor(path, tensor));
  RawMatrix raw{.dtype = stored.dtype,
                .rows = stored.shape[0],
                .cols = stored.shape[1],
                .layout = stored.fortran_order ? Layout::kColMajor : Layout::kRowMajor,
                .data = nullptr,
                .keepalive = nullptr};
  if (admit) RETURN_IF_ERROR(admit(raw));
  RETURN_IF_ERROR(ReadData(stored));
  RETURN_IF_ERROR(CheckFinite(path, stored, raw.rows, raw.cols, raw.layout, /*is_vector=*/false));
  raw.data = stored.data;
  raw.keepalive = std::move(stored.keepalive);
  return raw;
}

absl::StatusOr<std::vector<float>> ReadVector(const std::string& path, std::string_view tensor) {
  ASSIGN_OR_RETURN(StoredTensor stored, OpenTensor(path, std::string(tensor)));
  const std::vector<uint64_t>& shape = stored.shape;
  const bool vector_like =
      shape.size() == 1 || (shape.size() == 2 && (shape[0] == 1 || shape[1] == 1));
  if (!vector_like) {
    return Invalid(path, absl::StrCat(stored.label,
                                      "wrong rank: expected a vector (shape n, nx1 or 1xn) but "
                                      "the shape is ",
                                      ShapeString(shape)));
  }
  const uint64_t n = shape.size() == 1 ? shape[0] : shape[0] * shape[1];
  if (n == 0) {
    return Invalid(
        path, absl::StrCat(stored.label, "zero-sized dimension in shape ", ShapeString(shape)));
  }
  RETURN_IF_ERROR(ReadData(stored));
  // Element order is the same in C and Fortran order for a vector.
  ASSIGN_OR_RETURN(const Matrix m, ToMatrix(path, stored, n, 1, Layout::kRowMajor,
                                            /*is_vector=*/true));
  return std::vector<float>(m.data(), m.data() + m.size());
}

absl::Status WriteNpy(const std::string& path, const Matrix& m) {
  return WriteNpyData(path, absl::StrCat("(", m.rows(), ", ", m.cols(), ")"),
                      m.layout() == Layout::kColMajor, m.data(), m.size());
}

absl::Status WriteNpy(const std::string& path, absl::Span<const float> v) {
  return WriteNpyData(path, absl::StrCat("(", v.size(), ",)"), /*fortran_order=*/false, v.data(),
                      v.size());
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const Matrix*>>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::deque<Matrix> row_major_copies;  // Stable addresses.
  std::vector<const Matrix*> sources;
  uint64_t offset = 0;
  for (const auto& [name, matrix] : tensors) {
    if (matrix == nullptr) return Invalid(path, absl::StrCat("tensor '", name, "' is null"));
    if (name.empty() || name == kMetadataKey || header.contains(name)) {
      return Invalid(path, absl::StrCat("invalid or repeated tensor name '", name, "'"));
    }
    const Matrix* source = matrix;
    if (matrix->layout() != Layout::kRowMajor) {
      row_major_copies.push_back(matrix->Copy(Layout::kRowMajor));
      source = &row_major_copies.back();
    }
    sources.push_back(source);
    const uint64_t bytes = uint64_t{source->size()} * sizeof(float);
    header[name] = {{"dtype", "F32"},
                    {"shape", nlohmann::ordered_json::array({source->rows(), source->cols()})},
                    {"data_offsets", nlohmann::ordered_json::array({offset, offset + bytes})}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    return Invalid(path, "tensor names must be valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // Keeps the data section 8-byte aligned.
  char length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<char>((uint64_t{text.size()} >> (8 * i)) & 0xff);

  std::vector<std::string_view> parts = {std::string_view(length, 8), text};
  for (const Matrix* source : sources) parts.push_back(FloatBytes(source->data(), source->size()));
  return WriteFile(path, parts);
}

absl::StatusOr<Matrix> ReadQueries(const std::string& path) {
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  if (!loaded.ok()) {
    absl::StatusOr<std::vector<float>> vector = ReadVector(path);
    if (!vector.ok()) return loaded.status();
    Matrix m = Matrix::Owned(1, vector->size(), Layout::kRowMajor);
    std::copy(vector->begin(), vector->end(), m.mutable_data());
    return m;
  }
  if (loaded->matrix.layout() == Layout::kRowMajor) return std::move(loaded->matrix);
  return loaded->matrix.Copy(Layout::kRowMajor);
}

}  // namespace adasoftmax
