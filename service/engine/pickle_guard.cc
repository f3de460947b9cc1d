#include "service/engine/pickle_guard.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/engine/utf8.h"

namespace preflight::engine {
namespace {

// What the pass keeps of a value: how deep it nests, and for the few kinds a
// storage id is made of, the value itself.
struct Value {
  enum Kind { kOther, kMark, kString, kInt, kBigInt, kGlobal, kTuple } kind = kOther;
  int depth = 0;
  int64_t i = 0;
  std::string s;             // kString, kGlobal ("module.name").
  std::vector<Value> items;  // kTuple of at most kKeptTupleItems.
};

// A storage's persistent id is a 5-tuple; longer tuples keep no items.
constexpr size_t kKeptTupleItems = 8;

// Bytes per element of the storage types torch.save names; nullopt: unknown
// here (LibTorch decides about it).
std::optional<int64_t> ElementBytes(const std::string& type) {
  static const std::map<std::string, int64_t> kBytes = {
      {"torch.DoubleStorage", 8},         {"torch.FloatStorage", 4},
      {"torch.HalfStorage", 2},           {"torch.BFloat16Storage", 2},
      {"torch.LongStorage", 8},           {"torch.IntStorage", 4},
      {"torch.ShortStorage", 2},          {"torch.CharStorage", 1},
      {"torch.ByteStorage", 1},           {"torch.BoolStorage", 1},
      {"torch.ComplexDoubleStorage", 16}, {"torch.ComplexFloatStorage", 8},
      {"torch.QInt8Storage", 1},          {"torch.QUInt8Storage", 1},
      {"torch.QInt32Storage", 4},         {"torch.UntypedStorage", 1},
  };
  auto it = kBytes.find(type);
  if (it == kBytes.end()) return std::nullopt;
  return it->second;
}

class Pass {
 public:
  Pass(absl::string_view p, const RecordSizeFn& record_size, absl::string_view subject)
      : p_(p), record_size_(record_size), subject_(subject) {}

  absl::Status Run() {
    while (pos_ < p_.size()) {
      op_at_ = pos_;
      const unsigned char op = static_cast<unsigned char>(p_[pos_++]);
      if (op == '.') return absl::OkStatus();  // STOP
      if (absl::Status s = Step(op); !s.ok()) return s;
      if (stack_.size() > kMaxPickleStack) {
        return Invalid(absl::StrCat("holds more than ", kMaxPickleStack,
                                    " values on the unpickler's stack (the limit)"));
      }
    }
    return Invalid("ends without a STOP opcode (truncated)");
  }

 private:
  absl::Status Invalid(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(subject_, " ", what, ", at byte ", op_at_));
  }

  // Bounds-checked reads of an opcode's argument.
  bool Take(size_t n, absl::string_view* out) {
    if (p_.size() - pos_ < n) return false;
    *out = p_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool TakeLine(absl::string_view* out) {
    const size_t nl = p_.find('\n', pos_);
    if (nl == absl::string_view::npos) return false;
    *out = p_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return true;
  }
  bool TakeLe(size_t n, uint64_t* v) {
    absl::string_view b;
    if (!Take(n, &b)) return false;
    *v = 0;
    for (size_t k = 0; k < n; ++k) *v |= uint64_t{static_cast<unsigned char>(b[k])} << (8 * k);
    return true;
  }

  absl::Status Push(Value v) {
    if (v.depth > kMaxPickleDepth) {
      return Invalid(
          absl::StrCat("nests values deeper than ", kMaxPickleDepth, " levels (the limit)"));
    }
    stack_.push_back(std::move(v));
    return absl::OkStatus();
  }
  absl::Status PushOther(int depth = 0) {
    Value v;
    v.depth = depth;
    return Push(std::move(v));
  }
  bool Pop(Value* v) {
    if (stack_.empty() || stack_.back().kind == Value::kMark) return false;
    *v = std::move(stack_.back());
    stack_.pop_back();
    return true;
  }
  // Pops everything above the topmost mark, and the mark.
  bool PopToMark(std::vector<Value>* items) {
    size_t k = stack_.size();
    while (k > 0 && stack_[k - 1].kind != Value::kMark) --k;
    if (k == 0) return false;
    items->assign(std::make_move_iterator(stack_.begin() + static_cast<ptrdiff_t>(k)),
                  std::make_move_iterator(stack_.end()));
    stack_.resize(k - 1);
    return true;
  }
  static int MaxDepth(const std::vector<Value>& items) {
    int d = 0;
    for (const auto& v : items) d = std::max(d, v.depth);
    return d;
  }
  absl::Status PushTuple(std::vector<Value> items) {
    Value t;
    t.kind = Value::kTuple;
    t.depth = 1 + MaxDepth(items);
    if (items.size() <= kKeptTupleItems) {
      t.items = std::move(items);
      // Only scalars matter (a storage id holds no tuples): copies stay O(1).
      for (Value& v : t.items) v.items.clear();
    }
    return Push(std::move(t));
  }
  // Items added into the container below them (APPEND, SETITEMS, BUILD...).
  absl::Status AddInto(const std::vector<Value>& items) {
    if (stack_.empty() || stack_.back().kind == Value::kMark) {
      return Invalid("adds items with no container under them");
    }
    Value& c = stack_.back();
    c.depth = std::max(c.depth, items.empty() ? 1 : 1 + MaxDepth(items));
    if (c.depth > kMaxPickleDepth) {
      return Invalid(
          absl::StrCat("nests values deeper than ", kMaxPickleDepth, " levels (the limit)"));
    }
    return absl::OkStatus();
  }

  absl::Status PushInt(int64_t i) {
    Value v;
    v.kind = Value::kInt;
    v.i = i;
    return Push(std::move(v));
  }
  // LONG1/LONG4: little-endian two's complement of n bytes.
  absl::Status PushLong(absl::string_view b) {
    if (b.size() > 8) {
      Value v;
      v.kind = Value::kBigInt;
      return Push(std::move(v));
    }
    uint64_t u = 0;
    for (size_t k = 0; k < b.size(); ++k)
      u |= uint64_t{static_cast<unsigned char>(b[k])} << (8 * k);
    if (!b.empty() && b.size() < 8 && (static_cast<unsigned char>(b.back()) & 0x80)) {
      u |= ~uint64_t{0} << (8 * b.size());  // Sign-extend.
    }
    return PushInt(static_cast<int64_t>(u));
  }
  absl::Status PushString(absl::string_view s) {
    Value v;
    v.kind = Value::kString;
    v.s = std::string(s.substr(0, 256));  // Keys and locations are short.
    return Push(std::move(v));
  }

  // A persistent id ('storage', type, key, location, numel): the bytes it
  // declares must be in its record data/<key>.
  absl::Status CheckStorage(const Value& pid) {
    if (pid.kind != Value::kTuple || pid.items.size() != 5) return absl::OkStatus();
    const auto& it = pid.items;
    if (it[0].kind != Value::kString || it[0].s != "storage") return absl::OkStatus();
    if (it[1].kind != Value::kGlobal || it[2].kind != Value::kString) return absl::OkStatus();
    const std::string key = TruncateUtf8(it[2].s, 64, "...");
    if (it[4].kind == Value::kBigInt || (it[4].kind == Value::kInt && it[4].i < 0)) {
      return Invalid(absl::StrCat("declares storage '", key, "' with an impossible size"));
    }
    if (it[4].kind != Value::kInt) return absl::OkStatus();
    const std::optional<int64_t> element = ElementBytes(it[1].s);
    if (!element) return absl::OkStatus();
    const std::string record = absl::StrCat("data/", it[2].s);
    const std::optional<uint64_t> have = record_size_(record);
    if (!have) {
      return Invalid(absl::StrCat("declares storage '", key, "' but the file has no record ",
                                  TruncateUtf8(record, 80, "...")));
    }
    const int64_t numel = it[4].i;
    if (numel > INT64_MAX / *element || static_cast<uint64_t>(numel * *element) > *have) {
      return Invalid(absl::StrFormat(
          "declares storage '%s' of %d elements of %s (%s bytes) but its record in the file "
          "holds %d bytes: declared sizes must match the file",
          key, numel, it[1].s,
          numel > INT64_MAX / *element ? std::string("more than 2^63")
                                       : absl::StrCat(numel * *element),
          *have));
    }
    return absl::OkStatus();
  }

  absl::Status Step(unsigned char op) {
    absl::string_view b;
    uint64_t n = 0;
    Value a, c;
    std::vector<Value> items;
    // Made only when returned: most opcodes are fine.
    auto truncated = [&] { return Invalid(absl::StrFormat("is truncated in opcode 0x%02x", op)); };
    auto underflow = [&] {
      return Invalid(absl::StrFormat("pops more than it pushed (opcode 0x%02x)", op));
    };
    switch (op) {
      case 0x80:  // PROTO
        return Take(1, &b) ? absl::OkStatus() : truncated();
      case 0x95:  // FRAME: a length hint only.
        return Take(8, &b) ? absl::OkStatus() : truncated();
      case '(': {  // MARK
        Value m;
        m.kind = Value::kMark;
        stack_.push_back(std::move(m));
        return absl::OkStatus();
      }
      case '0':  // POP
        if (!stack_.empty()) {
          stack_.pop_back();
          return absl::OkStatus();
        }
        return underflow();
      case '1':  // POP_MARK
        return PopToMark(&items) ? absl::OkStatus() : underflow();
      case '2':  // DUP
        if (stack_.empty() || stack_.back().kind == Value::kMark) return underflow();
        a = stack_.back();
        return Push(std::move(a));
      // Scalars.
      case 'N':
      case 0x88:
      case 0x89:  // NONE, NEWTRUE, NEWFALSE
        return PushOther();
      case 'J':  // BININT
        if (!TakeLe(4, &n)) return truncated();
        return PushInt(static_cast<int32_t>(static_cast<uint32_t>(n)));
      case 'K':  // BININT1
        if (!TakeLe(1, &n)) return truncated();
        return PushInt(static_cast<int64_t>(n));
      case 'M':  // BININT2
        if (!TakeLe(2, &n)) return truncated();
        return PushInt(static_cast<int64_t>(n));
      case 0x8a:  // LONG1
        if (!TakeLe(1, &n) || !Take(n, &b)) return truncated();
        return PushLong(b);
      case 0x8b:  // LONG4
        if (!TakeLe(4, &n) || !Take(n, &b)) return truncated();
        return PushLong(b);
      case 'I':
      case 'L': {  // INT, LONG (text)
        if (!TakeLine(&b)) return truncated();
        if (!b.empty() && b.back() == 'L') b.remove_suffix(1);
        int64_t i = 0;
        if (absl::SimpleAtoi(b, &i)) return PushInt(i);
        Value v;
        v.kind = Value::kBigInt;
        return Push(std::move(v));
      }
      case 'G':  // BINFLOAT
        return Take(8, &b) ? PushOther() : truncated();
      case 'F':  // FLOAT (text)
        return TakeLine(&b) ? PushOther() : truncated();
      case 'X':  // BINUNICODE
        if (!TakeLe(4, &n) || !Take(n, &b)) return truncated();
        return PushString(b);
      case 0x8c:  // SHORT_BINUNICODE
        if (!TakeLe(1, &n) || !Take(n, &b)) return truncated();
        return PushString(b);
      case 0x8d:  // BINUNICODE8
        if (!TakeLe(8, &n) || !Take(n, &b)) return truncated();
        return PushString(b);
      case 'T':  // BINSTRING
        if (!TakeLe(4, &n) || !Take(n, &b)) return truncated();
        return PushString(b);
      case 'U':  // SHORT_BINSTRING
        if (!TakeLe(1, &n) || !Take(n, &b)) return truncated();
        return PushString(b);
      case 'S':
      case 'V':  // STRING, UNICODE (text)
        if (!TakeLine(&b)) return truncated();
        return PushString(b);
      case 'B':  // BINBYTES
        if (!TakeLe(4, &n) || !Take(n, &b)) return truncated();
        return PushOther();
      case 'C':  // SHORT_BINBYTES
        if (!TakeLe(1, &n) || !Take(n, &b)) return truncated();
        return PushOther();
      case 0x8e:
      case 0x96:  // BINBYTES8, BYTEARRAY8
        if (!TakeLe(8, &n) || !Take(n, &b)) return truncated();
        return PushOther();
      case 0x97:  // NEXT_BUFFER
        return PushOther();
      case 0x98:  // READONLY_BUFFER
        return stack_.empty() ? underflow() : absl::OkStatus();
      case 0x82: return Take(1, &b) ? PushOther() : truncated();  // EXT1
      case 0x83: return Take(2, &b) ? PushOther() : truncated();  // EXT2
      case 0x84:
        return Take(4, &b) ? PushOther() : truncated();  // EXT4
      // Globals and persistent ids.
      case 'c': {  // GLOBAL module\nname\n
        absl::string_view name;
        if (!TakeLine(&b) || !TakeLine(&name)) return truncated();
        Value g;
        g.kind = Value::kGlobal;
        g.s = absl::StrCat(b.substr(0, 128), ".", name.substr(0, 128));
        return Push(std::move(g));
      }
      case 0x93: {  // STACK_GLOBAL
        if (!Pop(&c) || !Pop(&a)) return underflow();
        Value g;
        g.kind = Value::kGlobal;
        // Operands may be globals themselves: without the cut, DUP +
        // STACK_GLOBAL doubles the name each time (found by the fuzzer).
        g.s = absl::StrCat(absl::string_view(a.s).substr(0, 128), ".",
                           absl::string_view(c.s).substr(0, 128));
        return Push(std::move(g));
      }
      case 'P':  // PERSID (text)
        return TakeLine(&b) ? PushOther() : truncated();
      case 'Q': {  // BINPERSID
        if (!Pop(&a)) return underflow();
        if (absl::Status s = CheckStorage(a); !s.ok()) return s;
        return PushOther(a.depth);
      }
      // Memo.
      case 'p':  // PUT (text)
        if (!TakeLine(&b)) return truncated();
        if (stack_.empty()) return underflow();
        memo_text_[std::string(b)] = stack_.back();
        return absl::OkStatus();
      case 'q':  // BINPUT
        if (!TakeLe(1, &n)) return truncated();
        if (stack_.empty()) return underflow();
        memo_[n] = stack_.back();
        return absl::OkStatus();
      case 'r':  // LONG_BINPUT
        if (!TakeLe(4, &n)) return truncated();
        if (stack_.empty()) return underflow();
        memo_[n] = stack_.back();
        return absl::OkStatus();
      case 0x94:  // MEMOIZE
        if (stack_.empty()) return underflow();
        memo_[memo_.size()] = stack_.back();
        return absl::OkStatus();
      case 'g': {  // GET (text)
        if (!TakeLine(&b)) return truncated();
        auto it = memo_text_.find(std::string(b));
        if (it == memo_text_.end()) return Invalid("reads a memo entry it never stored");
        a = it->second;
        return Push(std::move(a));
      }
      case 'h':
      case 'j': {  // BINGET, LONG_BINGET
        if (!TakeLe(op == 'h' ? 1 : 4, &n)) return truncated();
        auto it = memo_.find(n);
        if (it == memo_.end()) return Invalid("reads a memo entry it never stored");
        a = it->second;
        return Push(std::move(a));
      }
      // Containers.
      case ']':
      case '}':
      case 0x8f:  // EMPTY_LIST, EMPTY_DICT, EMPTY_SET
        return PushOther(1);
      case ')':  // EMPTY_TUPLE
        return PushTuple({});
      case 't':  // TUPLE
        if (!PopToMark(&items)) return underflow();
        return PushTuple(std::move(items));
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const size_t k = op - 0x84;
        if (stack_.size() < k) return underflow();
        for (size_t j = stack_.size() - k; j < stack_.size(); ++j) {
          if (stack_[j].kind == Value::kMark) return underflow();
        }
        items.assign(std::make_move_iterator(stack_.end() - static_cast<ptrdiff_t>(k)),
                     std::make_move_iterator(stack_.end()));
        stack_.resize(stack_.size() - k);
        return PushTuple(std::move(items));
      }
      case 'l':
      case 'd':
      case 0x91:  // LIST, DICT, FROZENSET
        if (!PopToMark(&items)) return underflow();
        return PushOther(1 + MaxDepth(items));
      case 'a':  // APPEND
        if (!Pop(&a)) return underflow();
        items.push_back(std::move(a));
        return AddInto(items);
      case 'e':
      case 'u':
      case 0x90:  // APPENDS, SETITEMS, ADDITEMS
        if (!PopToMark(&items)) return underflow();
        return AddInto(items);
      case 's':  // SETITEM
        if (!Pop(&c) || !Pop(&a)) return underflow();
        items.push_back(std::move(a));
        items.push_back(std::move(c));
        return AddInto(items);
      // Calls: the result is as deep as what it is built from.
      case 'R':
      case 0x81: {  // REDUCE, NEWOBJ
        if (!Pop(&a) || !Pop(&c)) return underflow();
        return PushOther(std::max(a.depth, c.depth));
      }
      case 0x92: {  // NEWOBJ_EX
        Value kw;
        if (!Pop(&kw) || !Pop(&a) || !Pop(&c)) return underflow();
        return PushOther(std::max({kw.depth, a.depth, c.depth}));
      }
      case 'b':  // BUILD
        if (!Pop(&a)) return underflow();
        items.push_back(std::move(a));
        return AddInto(items);
      case 'i': {  // INST module\nname\n, arguments above the mark
        absl::string_view name;
        if (!TakeLine(&b) || !TakeLine(&name)) return truncated();
        if (!PopToMark(&items)) return underflow();
        return PushOther(1 + MaxDepth(items));
      }
      case 'o':  // OBJ: class and arguments above the mark
        if (!PopToMark(&items) || items.empty()) return underflow();
        return PushOther(1 + MaxDepth(items));
      default: return Invalid(absl::StrFormat("has an unknown opcode 0x%02x", op));
    }
  }

  absl::string_view p_;
  const RecordSizeFn& record_size_;
  absl::string_view subject_;
  size_t pos_ = 0;
  size_t op_at_ = 0;
  std::vector<Value> stack_;
  std::map<uint64_t, Value> memo_;
  std::map<std::string, Value> memo_text_;
};

}  // namespace

absl::Status CheckPickle(absl::string_view pickle, const RecordSizeFn& record_size,
                         absl::string_view subject) {
  return Pass(pickle, record_size, subject).Run();
}

absl::Status CheckBatchPickle(absl::string_view pickle, const RecordSizeFn& record_size) {
  return CheckPickle(pickle, record_size, "the batch's pickle");
}

}  // namespace preflight::engine
