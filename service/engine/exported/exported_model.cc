#include "service/engine/exported/exported_model.h"

#include <map>
#include <optional>
#include <regex>
#include <set>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "service/engine/exported/pt2_archive.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal {
namespace {

using exported::Pt2Archive;
using exported::StoredTensor;
using nlohmann::json;

// The serialized-graph schema versions this interpreter reads: major 8 (the
// pinned torch writes 8.20); a newer minor may add argument kinds, which
// would be refused one by one, but is refused whole so a report never rests
// on a partly understood file.
constexpr int kSchemaMajor = 8;
constexpr int kMaxSchemaMinor = 20;

// More nodes than any model the engine can train in its time budget; a
// larger graph is refused before any operator is resolved.
constexpr size_t kMaxNodes = 100'000;
constexpr int kMaxSubgraphDepth = 8;

// Operators refused even though they are in `aten`: they reach files,
// stdout or process-global state. The one place this policy lives.
const std::map<std::string, std::string>& DeniedOps() {
  static const auto* denied = new std::map<std::string, std::string>{
      {"aten::from_file", "reads a file"},
      {"aten::save", "writes a file"},
      {"aten::load", "reads a file"},
      {"aten::_print", "writes to the process's stdout"},
      {"aten::set_", "rebinds a tensor onto raw storage (source_Storage overloads)"},
      {"aten::set", "rebinds a tensor onto raw storage (source_Storage overloads)"},
      {"aten::_cufft_set_plan_cache_max_size", "changes process-global state"},
      {"aten::_cufft_clear_plan_cache", "changes process-global state"},
  };
  return *denied;
}

bool Denied(const std::string& op, const std::string& overload, std::string* why) {
  auto it = DeniedOps().find(op);
  if (it == DeniedOps().end()) return false;
  if ((op == "aten::set_" || op == "aten::set") && !absl::StartsWith(overload, "source_Storage")) {
    return false;
  }
  *why = it->second;
  return true;
}

// The baked train/eval arguments (see the header).
const std::map<std::string, std::string>& TrainFlags() {
  static const auto* flags = new std::map<std::string, std::string>{
      {"aten::dropout", "train"},
      {"aten::feature_dropout", "train"},
      {"aten::alpha_dropout", "train"},
      {"aten::feature_alpha_dropout", "train"},
      {"aten::native_dropout", "train"},
      {"aten::batch_norm", "training"},
      {"aten::native_batch_norm", "training"},
      {"aten::_native_batch_norm_legit", "training"},
      {"aten::_native_batch_norm_legit_functional", "training"},
      {"aten::cudnn_batch_norm", "training"},
      {"aten::miopen_batch_norm", "training"},
      {"aten::rrelu", "training"},
      {"aten::rrelu_with_noise", "training"},
  };
  return *flags;
}

absl::Status Unsupported(const std::string& what) { return absl::UnimplementedError(what); }
absl::Status Malformed(const std::string& what) { return absl::InvalidArgumentError(what); }

c10::IValue WrappedNumber(const c10::IValue& v) {
  torch::Tensor t = v.isInt()      ? torch::scalar_tensor(v.toInt(), torch::kLong)
                    : v.isDouble() ? torch::scalar_tensor(v.toDouble(), torch::kDouble)
                                   : torch::scalar_tensor(v.toBool(), torch::kBool);
  t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}

// One bound argument of a node.
struct Arg {
  enum Kind {
    kConst,          // `constant`.
    kSlot,           // A value produced earlier (tensor or SymInt).
    kTensorList,     // Tensor[] from `slots`.
    kOptTensorList,  // Tensor?[] from `slots` (-1: None).
    kSymList,        // int[] mixing constants (`ints`) and SymInt slots (`slots`, -1: constant).
    kTrainFlag,      // `constant` (a bool) in train mode, false in eval mode.
  };
  Kind kind = kConst;
  c10::IValue constant;
  int slot = -1;
  std::vector<int> slots;
  std::vector<int64_t> ints;
};

struct Output {
  enum Kind { kIgnore, kSlot, kList } kind = kIgnore;
  int slot = -1;
  std::vector<int> slots;
};

struct Step {
  std::string name;                       // The node's name, for messages.
  std::string target;                     // "aten::linear.default".
  std::optional<c10::OperatorHandle> op;  // Absent: a grad-mode marker.
  std::vector<Arg> args;
  std::vector<Output> outs;
  bool train_only = false;
  // Grad-mode markers around an inlined wrap_with_set_grad_enabled body:
  // push sets grad mode to `grad_enabled`, pop restores it.
  enum Marker { kNone, kPushGrad, kPopGrad } marker = kNone;
  bool grad_enabled = true;
};

// A user input's declared shape: a fixed size or a symbol of
// range_constraints per dimension.
struct InputSpec {
  std::string name;
  int slot = -1;
  std::vector<int64_t> fixed;       // -1 where symbolic.
  std::vector<std::string> symbol;  // "" where fixed or an expression not checked.
};

struct Range {
  int64_t min = 0;
  int64_t max = std::numeric_limits<int64_t>::max();
};

struct Placeholder {
  std::string fqn;
  int slot = -1;
};

struct Program {
  int num_slots = 0;
  std::vector<Step> steps;
  std::vector<Placeholder> params, buffers;
  std::vector<std::pair<int, c10::IValue>> constants;    // Lifted constants and constant inputs.
  std::vector<InputSpec> inputs;                         // Includes the targets of an own loss.
  std::vector<int> outputs;                              // User outputs.
  std::vector<std::pair<int, size_t>> buffer_mutations;  // (slot, index into buffers).
  std::map<std::string, Range> ranges;
  bool own_loss = false;
  // Two outputs and at least two inputs: an own-loss program whose loss is
  // not 0-d (a per-sample loss) looks the same until a batch shows whether
  // the last input is the targets (see ExportedModel::AcceptBatch).
  bool own_loss_candidate = false;
};

// Compiles the serialized graph into a Program.
class Compiler {
 public:
  Compiler(const Pt2Archive& archive, const torch::Device& device)
      : archive_(archive), device_(device) {}

  absl::StatusOr<std::shared_ptr<Program>> Compile(std::vector<StoredTensor>* param_values,
                                                   std::vector<StoredTensor>* buffer_values) {
    const json& root = archive_.program;
    if (!root.is_object()) return Malformed("the program JSON is not an object");
    if (absl::Status s = CheckSchemaVersion(root); !s.ok()) return s;
    if (!root.contains("graph_module") || !root["graph_module"].is_object()) {
      return Malformed("the program has no graph_module");
    }
    const json& gm = root["graph_module"];
    if (!gm.contains("graph") || !gm["graph"].is_object()) {
      return Malformed("graph_module has no graph");
    }
    if (!gm.contains("signature") || !gm["signature"].is_object()) {
      return Malformed("graph_module has no signature");
    }
    prog_ = std::make_shared<Program>();
    if (absl::Status s = ReadRanges(root); !s.ok()) return s;
    Scope top;
    if (absl::Status s =
            ReadInputs(gm["signature"], gm["graph"], &top, param_values, buffer_values);
        !s.ok()) {
      return s;
    }
    const json& nodes = gm["graph"].value("nodes", json::array());
    if (!nodes.is_array()) return Malformed("graph.nodes is not a list");
    if (nodes.size() > kMaxNodes) {
      return Unsupported(
          absl::StrCat("the graph has ", nodes.size(), " nodes; at most ", kMaxNodes, " are run"));
    }
    if (absl::Status s = CompileNodes(nodes, &top, 0); !s.ok()) return s;
    if (absl::Status s = ReadOutputs(gm["signature"], top); !s.ok()) return s;
    // Own loss: (inputs..., targets) -> (output, 0-d loss), see the header.
    if (prog_->outputs.size() == 2 && prog_->inputs.size() >= 2) {
      prog_->own_loss_candidate = true;
      const json& meta =
          gm["graph"].value("tensor_values", json::object()).value(output_names_[1], json());
      prog_->own_loss =
          meta.is_object() && meta.value("sizes", json()).is_array() && meta["sizes"].empty();
    }
    prog_->num_slots = next_slot_;
    return prog_;
  }

 private:
  // Names of values in one graph (a subgraph has its own).
  using Scope = std::map<std::string, int>;

  absl::Status CheckSchemaVersion(const json& root) {
    const json& v = root.value("schema_version", json());
    if (!v.is_object() || !v.value("major", json()).is_number_integer() ||
        !v.value("minor", json()).is_number_integer()) {
      return Malformed("the program has no schema_version {major, minor}");
    }
    const int major = v["major"].get<int>();
    const int minor = v["minor"].get<int>();
    if (major != kSchemaMajor || minor < 0 || minor > kMaxSchemaMinor) {
      return Unsupported(absl::StrCat("schema_version ", major, ".", minor,
                                      " is outside the supported range ", kSchemaMajor, ".0 - ",
                                      kSchemaMajor, ".", kMaxSchemaMinor));
    }
    return absl::OkStatus();
  }

  absl::Status ReadRanges(const json& root) {
    const json& rc = root.value("range_constraints", json::object());
    if (!rc.is_object()) return Malformed("range_constraints is not an object");
    for (const auto& [sym, r] : rc.items()) {
      Range range;
      if (r.is_object()) {
        if (r.value("min_val", json()).is_number_integer()) range.min = r["min_val"].get<int64_t>();
        if (r.value("max_val", json()).is_number_integer()) range.max = r["max_val"].get<int64_t>();
      }
      prog_->ranges[sym] = range;
    }
    return absl::OkStatus();
  }

  int NewSlot() { return next_slot_++; }

  absl::StatusOr<int> Define(Scope* scope, const std::string& name, const std::string& where) {
    if (name.empty()) return Malformed(absl::StrCat(where, " defines a value without a name"));
    if (scope->count(name)) {
      return Malformed(absl::StrCat(where, " redefines value '", name, "'"));
    }
    const int slot = NewSlot();
    (*scope)[name] = slot;
    return slot;
  }

  absl::StatusOr<int> Use(const Scope& scope, const json& name, const std::string& where) {
    if (!name.is_string()) return Malformed(absl::StrCat(where, ": a value name is not a string"));
    auto it = scope.find(name.get<std::string>());
    if (it == scope.end()) {
      return Malformed(absl::StrCat(where, " uses '", name.get<std::string>(),
                                    "', which no earlier node or input defines"));
    }
    return it->second;
  }

  static std::string TensorName(const json& arg) {
    if (arg.is_object() && arg.contains("as_tensor") && arg["as_tensor"].is_object() &&
        arg["as_tensor"].value("name", json()).is_string()) {
      return arg["as_tensor"]["name"].get<std::string>();
    }
    return "";
  }

  absl::Status ReadInputs(const json& sig, const json& graph, Scope* scope,
                          std::vector<StoredTensor>* param_values,
                          std::vector<StoredTensor>* buffer_values) {
    const json& specs = sig.value("input_specs", json());
    if (!specs.is_array()) return Malformed("signature.input_specs is not a list");
    const json& tensor_values = graph.value("tensor_values", json::object());
    for (size_t i = 0; i < specs.size(); ++i) {
      const json& spec = specs[i];
      const std::string where = absl::StrCat("signature.input_specs[", i, "]");
      if (!spec.is_object() || spec.size() != 1)
        return Malformed(absl::StrCat(where, " is malformed"));
      const std::string kind = spec.begin().key();
      const json& body = spec.begin().value();
      if (kind == "parameter" || kind == "buffer") {
        const bool param = kind == "parameter";
        const json& arg = body.value("arg", json());
        const std::string fqn_key = param ? "parameter_name" : "buffer_name";
        if (!arg.is_object() || !arg.value("name", json()).is_string() ||
            !body.value(fqn_key, json()).is_string()) {
          return Malformed(absl::StrCat(where, " (", kind, ") lacks arg.name or ", fqn_key));
        }
        const std::string fqn = body[fqn_key].get<std::string>();
        auto slot = Define(scope, arg["name"].get<std::string>(), where);
        if (!slot.ok()) return slot.status();
        auto w = archive_.weights.find(fqn);
        const StoredTensor* stored = nullptr;
        if (w != archive_.weights.end()) {
          stored = &w->second;
        } else if (auto c = archive_.constants.find(fqn); c != archive_.constants.end()) {
          stored = &c->second;  // Non-persistent buffers are stored as constants.
        }
        if (stored == nullptr) {
          return Malformed(
              absl::StrCat(where, ": ", kind, " '", fqn, "' is not in the archive's weights"));
        }
        if (param) {
          prog_->params.push_back({fqn, *slot});
          param_values->push_back(*stored);
        } else {
          buffer_index_[fqn] = prog_->buffers.size();
          prog_->buffers.push_back({fqn, *slot});
          buffer_values->push_back(*stored);
        }
      } else if (kind == "tensor_constant") {
        const json& arg = body.value("arg", json());
        if (!arg.is_object() || !arg.value("name", json()).is_string() ||
            !body.value("tensor_constant_name", json()).is_string()) {
          return Malformed(absl::StrCat(where, " (tensor_constant) is malformed"));
        }
        const std::string fqn = body["tensor_constant_name"].get<std::string>();
        auto c = archive_.constants.find(fqn);
        if (c == archive_.constants.end()) {
          return Malformed(absl::StrCat(where, ": tensor constant '", fqn,
                                        "' is not in the archive's constants"));
        }
        auto slot = Define(scope, arg["name"].get<std::string>(), where);
        if (!slot.ok()) return slot.status();
        prog_->constants.emplace_back(*slot, c->second.tensor);
      } else if (kind == "constant_input") {
        if (!body.value("name", json()).is_string()) {
          return Malformed(absl::StrCat(where, " (constant_input) has no name"));
        }
        auto v = ConstantValue(body.value("value", json()), where);
        if (!v.ok()) return v.status();
        auto slot = Define(scope, body["name"].get<std::string>(), where);
        if (!slot.ok()) return slot.status();
        prog_->constants.emplace_back(*slot, *v);
      } else if (kind == "user_input") {
        const std::string name = TensorName(body.value("arg", json()));
        if (name.empty()) {
          return Unsupported(absl::StrCat(where, ": a user input that is not a tensor (",
                                          body.value("arg", json()).dump().substr(0, 80), ")"));
        }
        auto slot = Define(scope, name, where);
        if (!slot.ok()) return slot.status();
        InputSpec in;
        in.name = name;
        in.slot = *slot;
        if (absl::Status s = ReadShape(tensor_values, name, &in); !s.ok()) return s;
        prog_->inputs.push_back(std::move(in));
      } else {
        return Unsupported(absl::StrCat(where, ": input kind '", kind,
                                        "' (only parameters, "
                                        "buffers, tensor constants and tensor user inputs)"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadShape(const json& tensor_values, const std::string& name, InputSpec* in) {
    const json& meta = tensor_values.value(name, json());
    if (!meta.is_object() || !meta.value("sizes", json()).is_array()) {
      return Malformed(absl::StrCat("graph.tensor_values has no sizes for input '", name, "'"));
    }
    static const std::regex kSymbol(R"(^(?:Symbol\(')?([A-Za-z_][A-Za-z0-9_]*)(?:'.*\))?$)");
    for (const json& d : meta["sizes"]) {
      if (d.is_object() && d.value("as_int", json()).is_number_integer()) {
        in->fixed.push_back(d["as_int"].get<int64_t>());
        in->symbol.push_back("");
      } else if (d.is_object() && d.contains("as_expr") && d["as_expr"].is_object() &&
                 d["as_expr"].value("expr_str", json()).is_string()) {
        std::smatch m;
        const std::string expr = d["as_expr"]["expr_str"].get<std::string>();
        in->fixed.push_back(-1);
        in->symbol.push_back(std::regex_match(expr, m, kSymbol) ? m[1].str() : "");
      } else {
        return Malformed(absl::StrCat("input '", name, "' has a malformed size"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadOutputs(const json& sig, const Scope& scope) {
    const json& specs = sig.value("output_specs", json());
    if (!specs.is_array()) return Malformed("signature.output_specs is not a list");
    for (size_t i = 0; i < specs.size(); ++i) {
      const json& spec = specs[i];
      const std::string where = absl::StrCat("signature.output_specs[", i, "]");
      if (!spec.is_object() || spec.size() != 1)
        return Malformed(absl::StrCat(where, " is malformed"));
      const std::string kind = spec.begin().key();
      const json& body = spec.begin().value();
      if (kind == "user_output") {
        const std::string name = TensorName(body.value("arg", json()));
        if (name.empty()) {
          return Unsupported(absl::StrCat(where, ": a user output that is not a tensor"));
        }
        auto slot = Use(scope, json(name), where);
        if (!slot.ok()) return slot.status();
        prog_->outputs.push_back(*slot);
        output_names_.push_back(name);
      } else if (kind == "buffer_mutation") {
        const json& arg = body.value("arg", json());
        if (!arg.is_object() || !body.value("buffer_name", json()).is_string()) {
          return Malformed(absl::StrCat(where, " (buffer_mutation) is malformed"));
        }
        auto slot = Use(scope, arg.value("name", json()), where);
        if (!slot.ok()) return slot.status();
        auto b = buffer_index_.find(body["buffer_name"].get<std::string>());
        if (b == buffer_index_.end()) {
          return Malformed(absl::StrCat(where, " mutates '", body["buffer_name"].get<std::string>(),
                                        "', which is not an input buffer"));
        }
        prog_->buffer_mutations.emplace_back(*slot, b->second);
      } else {
        return Unsupported(absl::StrCat(where, ": output kind '", kind,
                                        "' (only user outputs and buffer mutations)"));
      }
    }
    if (prog_->outputs.empty()) return Unsupported("the program has no user outputs");
    return absl::OkStatus();
  }

  absl::StatusOr<c10::IValue> ConstantValue(const json& v, const std::string& where) {
    if (!v.is_object() || v.size() != 1) return Malformed(absl::StrCat(where, ": malformed value"));
    const std::string tag = v.begin().key();
    const json& x = v.begin().value();
    if (tag == "as_none") return c10::IValue();
    if (tag == "as_int" && x.is_number_integer()) return c10::IValue(x.get<int64_t>());
    if (tag == "as_float" && x.is_number()) return c10::IValue(x.get<double>());
    if (tag == "as_bool" && x.is_boolean()) return c10::IValue(x.get<bool>());
    if (tag == "as_string" && x.is_string()) return c10::IValue(x.get<std::string>());
    return Malformed(absl::StrCat(where, ": malformed constant '", tag, "'"));
  }

  // Resolves "torch.ops.<ns>.<op>.<overload>" with the namespace and deny
  // policies.
  absl::StatusOr<c10::OperatorHandle> Resolve(const std::string& target, const std::string& where,
                                              std::string* qualified) {
    std::vector<std::string> parts = absl::StrSplit(target, '.');
    if (parts.size() != 5 || parts[0] != "torch" || parts[1] != "ops") {
      return Unsupported(absl::StrCat(where, ": target '", target,
                                      "' is not an operator (torch.ops.<namespace>.<op>."
                                      "<overload>); Python callables are not run"));
    }
    const std::string& ns = parts[2];
    if (ns != "aten") {
      return Unsupported(absl::StrCat(where, ": operator '", target, "' is in namespace '", ns,
                                      "'; only aten operators (and the handled higher-order "
                                      "ops) are run, custom operators are refused"));
    }
    const std::string op = absl::StrCat(ns, "::", parts[3]);
    const std::string overload = parts[4] == "default" ? "" : parts[4];
    *qualified = overload.empty() ? op : absl::StrCat(op, ".", overload);
    std::string why;
    if (Denied(op, overload, &why)) {
      return Unsupported(absl::StrCat(where, ": operator '", *qualified, "' is refused: it ", why));
    }
    auto handle = c10::Dispatcher::singleton().findSchema({op, overload});
    if (!handle.has_value()) {
      return Unsupported(
          absl::StrCat(where, ": operator '", *qualified, "' is not known to this LibTorch"));
    }
    return *handle;
  }

  absl::StatusOr<int64_t> Int(const json& x, const std::string& where) {
    if (!x.is_number_integer()) return Malformed(absl::StrCat(where, " is not an integer"));
    return x.get<int64_t>();
  }

  // One argument's JSON (a tagged union) bound against the schema type.
  absl::StatusOr<Arg> BindArg(const json& v, const c10::Argument& schema_arg, const Scope& scope,
                              const std::string& where) {
    if (!v.is_object() || v.size() != 1) return Malformed(absl::StrCat(where, " is malformed"));
    const std::string tag = v.begin().key();
    const json& x = v.begin().value();
    Arg a;
    auto slot_of = [&](const json& t) -> absl::StatusOr<int> {
      if (!t.is_object()) return Malformed(absl::StrCat(where, ": malformed tensor reference"));
      return Use(scope, t.value("name", json()), where);
    };
    if (tag == "as_none") {
      a.constant = c10::IValue();
    } else if (tag == "as_tensor") {
      auto s = slot_of(x);
      if (!s.ok()) return s.status();
      a.kind = Arg::kSlot;
      a.slot = *s;
    } else if (tag == "as_tensors" || tag == "as_optional_tensors") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": ", tag, " is not a list"));
      bool optional = tag == "as_optional_tensors";
      if (auto lt = schema_arg.type()->cast<c10::ListType>()) {
        optional = optional || lt->getElementType()->kind() == c10::TypeKind::OptionalType;
      }
      a.kind = optional ? Arg::kOptTensorList : Arg::kTensorList;
      for (const json& e : x) {
        if (tag == "as_optional_tensors" && e.is_object() && e.contains("as_none")) {
          a.slots.push_back(-1);
          continue;
        }
        const json& t = tag == "as_optional_tensors" ? e.value("as_tensor", json()) : e;
        auto s = slot_of(t);
        if (!s.ok()) return s.status();
        a.slots.push_back(*s);
      }
    } else if (tag == "as_optional_tensor") {
      if (x.is_object() && x.contains("as_none")) {
        a.constant = c10::IValue();
      } else {
        auto s = slot_of(x.value("as_tensor", json()));
        if (!s.ok()) return s.status();
        a.kind = Arg::kSlot;
        a.slot = *s;
      }
    } else if (tag == "as_int") {
      auto i = Int(x, where);
      if (!i.ok()) return i.status();
      a.constant = *i;
    } else if (tag == "as_ints") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": as_ints is not a list"));
      std::vector<int64_t> ints;
      for (const json& e : x) {
        auto i = Int(e, where);
        if (!i.ok()) return i.status();
        ints.push_back(*i);
      }
      a.constant = c10::IValue(ints);
    } else if (tag == "as_float") {
      if (!x.is_number()) return Malformed(absl::StrCat(where, ": as_float is not a number"));
      a.constant = x.get<double>();
    } else if (tag == "as_floats") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": as_floats is not a list"));
      std::vector<double> fs;
      for (const json& e : x) {
        if (!e.is_number()) return Malformed(absl::StrCat(where, ": as_floats holds a non-number"));
        fs.push_back(e.get<double>());
      }
      a.constant = c10::IValue(fs);
    } else if (tag == "as_bool") {
      if (!x.is_boolean()) return Malformed(absl::StrCat(where, ": as_bool is not a bool"));
      a.constant = x.get<bool>();
    } else if (tag == "as_bools") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": as_bools is not a list"));
      c10::List<bool> bs;
      for (const json& e : x) {
        if (!e.is_boolean()) return Malformed(absl::StrCat(where, ": as_bools holds a non-bool"));
        bs.push_back(e.get<bool>());
      }
      a.constant = c10::IValue(bs);
    } else if (tag == "as_string") {
      if (!x.is_string()) return Malformed(absl::StrCat(where, ": as_string is not a string"));
      a.constant = x.get<std::string>();
    } else if (tag == "as_strings") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": as_strings is not a list"));
      c10::List<std::string> ss;
      for (const json& e : x) {
        if (!e.is_string())
          return Malformed(absl::StrCat(where, ": as_strings holds a non-string"));
        ss.push_back(e.get<std::string>());
      }
      a.constant = c10::IValue(ss);
    } else if (tag == "as_sym_int" || tag == "as_sym_float" || tag == "as_sym_bool") {
      if (!x.is_object() || x.size() != 1)
        return Malformed(absl::StrCat(where, ": malformed ", tag));
      const std::string inner = x.begin().key();
      if (inner == "as_name") {
        auto s = Use(scope, x["as_name"], where);
        if (!s.ok()) return s.status();
        a.kind = Arg::kSlot;
        a.slot = *s;
      } else {
        auto c = ConstantValue(x, where);
        if (!c.ok()) return c.status();
        a.constant = *c;
      }
    } else if (tag == "as_sym_ints") {
      if (!x.is_array()) return Malformed(absl::StrCat(where, ": as_sym_ints is not a list"));
      a.kind = Arg::kSymList;
      for (const json& e : x) {
        if (e.is_object() && e.contains("as_name")) {
          auto s = Use(scope, e["as_name"], where);
          if (!s.ok()) return s.status();
          a.slots.push_back(*s);
          a.ints.push_back(0);
        } else if (e.is_object() && e.contains("as_int")) {
          auto i = Int(e["as_int"], where);
          if (!i.ok()) return i.status();
          a.slots.push_back(-1);
          a.ints.push_back(*i);
        } else {
          return Malformed(absl::StrCat(where, ": malformed as_sym_ints element"));
        }
      }
    } else if (tag == "as_scalar_type") {
      auto i = Int(x, where);
      if (!i.ok()) return i.status();
      auto st = exported::SerializedScalarType(*i);
      if (!st.ok()) return Malformed(absl::StrCat(where, ": ", st.status().message()));
      a.constant = c10::IValue(*st);
    } else if (tag == "as_memory_format") {
      auto i = Int(x, where);
      if (!i.ok()) return i.status();
      switch (*i) {
        case 1: a.constant = c10::IValue(c10::MemoryFormat::Contiguous); break;
        case 2: a.constant = c10::IValue(c10::MemoryFormat::ChannelsLast); break;
        case 3: a.constant = c10::IValue(c10::MemoryFormat::ChannelsLast3d); break;
        case 4: a.constant = c10::IValue(c10::MemoryFormat::Preserve); break;
        default: return Malformed(absl::StrCat(where, ": unknown memory format ", *i));
      }
    } else if (tag == "as_layout") {
      auto i = Int(x, where);
      if (!i.ok()) return i.status();
      if (*i != 7) return Unsupported(absl::StrCat(where, ": layout ", *i, " (only strided)"));
      a.constant = c10::IValue(c10::kStrided);
    } else if (tag == "as_device") {
      // Programs are traced on one device and run on another: every device
      // constant becomes the device the check runs on.
      a.constant = c10::IValue(device_);
    } else if (tag == "as_complex") {
      if (!x.is_object() || !x.value("real", json()).is_number() ||
          !x.value("imag", json()).is_number()) {
        return Malformed(absl::StrCat(where, ": malformed as_complex"));
      }
      a.constant =
          c10::IValue(c10::complex<double>(x["real"].get<double>(), x["imag"].get<double>()));
    } else {
      return Unsupported(absl::StrCat(where, ": argument kind '", tag, "' is not run"));
    }
    return a;
  }

  absl::Status BindOutputs(const json& outputs, const c10::FunctionSchema& schema, Scope* scope,
                           const std::string& where, Step* step) {
    if (!outputs.is_array()) return Malformed(absl::StrCat(where, ": outputs is not a list"));
    const size_t n = schema.returns().size();
    if (outputs.size() != n && !(n == 0 && outputs.size() == 1)) {
      return Malformed(absl::StrCat(where, ": ", outputs.size(), " outputs for an operator with ",
                                    n, " returns"));
    }
    for (size_t i = 0; i < outputs.size() && i < n; ++i) {
      const json& o = outputs[i];
      Output out;
      if (!o.is_object() || o.size() != 1)
        return Malformed(absl::StrCat(where, ": malformed output"));
      const std::string tag = o.begin().key();
      const json& x = o.begin().value();
      if (tag == "as_none") {
        out.kind = Output::kIgnore;
      } else if (tag == "as_tensor" || tag == "as_sym_int" || tag == "as_sym_float" ||
                 tag == "as_sym_bool") {
        const json& name =
            tag == "as_tensor" ? x.value("name", json()) : x.value("as_name", json());
        if (!name.is_string()) return Malformed(absl::StrCat(where, ": output without a name"));
        auto s = Define(scope, name.get<std::string>(), where);
        if (!s.ok()) return s.status();
        out.kind = Output::kSlot;
        out.slot = *s;
      } else if (tag == "as_tensors" || tag == "as_optional_tensors") {
        if (!x.is_array()) return Malformed(absl::StrCat(where, ": malformed list output"));
        out.kind = Output::kList;
        for (const json& e : x) {
          const json& t = tag == "as_optional_tensors" ? e.value("as_tensor", json()) : e;
          if (!t.is_object() || !t.value("name", json()).is_string()) {
            out.slots.push_back(-1);
            continue;
          }
          auto s = Define(scope, t["name"].get<std::string>(), where);
          if (!s.ok()) return s.status();
          out.slots.push_back(*s);
        }
      } else {
        return Unsupported(absl::StrCat(where, ": output kind '", tag, "'"));
      }
      step->outs.push_back(std::move(out));
    }
    return absl::OkStatus();
  }

  absl::Status CompileNodes(const json& nodes, Scope* scope, int depth) {
    for (size_t i = 0; i < nodes.size(); ++i) {
      const json& node = nodes[i];
      if (!node.is_object() || !node.value("target", json()).is_string() ||
          !node.value("inputs", json()).is_array()) {
        return Malformed(absl::StrCat("graph node ", i, " has no target or inputs"));
      }
      const std::string target = node["target"].get<std::string>();
      const std::string name = node.value("name", json()).is_string()
                                   ? node["name"].get<std::string>()
                                   : absl::StrCat("#", i);
      const std::string where = absl::StrCat("node '", name, "' (", target, ")");
      if (absl::StartsWith(target, "torch.ops.higher_order.")) {
        if (absl::Status s = CompileHigherOrder(node, target, scope, where, depth); !s.ok()) {
          return s;
        }
        continue;
      }
      Step step;
      step.name = name;
      auto handle = Resolve(target, where, &step.target);
      if (!handle.ok()) return handle.status();
      step.op = *handle;
      const c10::FunctionSchema& schema = handle->schema();
      std::map<std::string, const json*> given;
      for (const json& in : node["inputs"]) {
        if (!in.is_object() || !in.value("name", json()).is_string() || !in.contains("arg")) {
          return Malformed(absl::StrCat(where, ": an input without name or arg"));
        }
        given[in["name"].get<std::string>()] = &in["arg"];
      }
      const auto flag = TrainFlags().find(schema.name());
      for (const c10::Argument& sa : schema.arguments()) {
        auto it = given.find(sa.name());
        Arg a;
        if (it == given.end()) {
          if (!sa.default_value().has_value()) {
            return Malformed(absl::StrCat(where, ": argument '", sa.name(), "' missing"));
          }
          a.constant = *sa.default_value();
        } else {
          auto b =
              BindArg(*it->second, sa, *scope, absl::StrCat(where, " argument '", sa.name(), "'"));
          if (!b.ok()) return b.status();
          a = *std::move(b);
          given.erase(it);
        }
        // FX passes Python numbers where a schema wants a Tensor (add_(t, 1));
        // PyTorch's argument parser wraps them as 0-d "wrapped number"
        // tensors, which type promotion treats as scalars. So does this.
        if (a.kind == Arg::kConst && sa.type()->kind() == c10::TypeKind::TensorType &&
            (a.constant.isInt() || a.constant.isDouble() || a.constant.isBool())) {
          a.constant = WrappedNumber(a.constant);
        }
        if (flag != TrainFlags().end() && flag->second == sa.name() && a.kind == Arg::kConst &&
            a.constant.isBool()) {
          a.kind = Arg::kTrainFlag;
        }
        step.args.push_back(std::move(a));
      }
      if (!given.empty()) {
        return Malformed(absl::StrCat(where, ": argument '", given.begin()->first,
                                      "' is not in the operator's schema"));
      }
      // BatchNorm's num_batches_tracked += 1 is a node of its own in
      // training IR; eager eval mode does not count.
      if (schema.name() == "aten::add_" && !step.args.empty() && step.args[0].kind == Arg::kSlot) {
        for (const auto& b : prog_->buffers) {
          if (b.slot == step.args[0].slot && absl::EndsWith(b.fqn, "num_batches_tracked")) {
            step.train_only = true;
          }
        }
      }
      if (absl::Status s =
              BindOutputs(node.value("outputs", json::array()), schema, scope, where, &step);
          !s.ok()) {
        return s;
      }
      prog_->steps.push_back(std::move(step));
      if (prog_->steps.size() > kMaxNodes) {
        return Unsupported(absl::StrCat("the graph has more than ", kMaxNodes, " nodes"));
      }
    }
    return absl::OkStatus();
  }

  // wrap_with_set_grad_enabled(enabled, body, *args): the body is inlined
  // between grad-mode markers. Every other higher-order op is refused.
  absl::Status CompileHigherOrder(const json& node, const std::string& target, Scope* scope,
                                  const std::string& where, int depth) {
    if (target != "torch.ops.higher_order.wrap_with_set_grad_enabled") {
      return Unsupported(absl::StrCat(where, ": higher-order operator '", target,
                                      "' is not run (only wrap_with_set_grad_enabled)"));
    }
    if (depth >= kMaxSubgraphDepth) {
      return Unsupported(absl::StrCat(where, ": subgraphs nest deeper than ", kMaxSubgraphDepth));
    }
    const json& ins = node["inputs"];
    if (ins.size() < 2 || !ins[0].is_object() || !ins[1].is_object()) {
      return Malformed(absl::StrCat(where, ": expects (enabled, body, *args)"));
    }
    const json& enabled = ins[0].value("arg", json()).value("as_bool", json());
    const json& body = ins[1].value("arg", json()).value("as_graph", json());
    if (!enabled.is_boolean() || !body.is_object() || !body.value("graph", json()).is_object()) {
      return Malformed(absl::StrCat(where, ": expects a bool and a graph argument"));
    }
    const json& graph = body["graph"];
    const json& params = graph.value("inputs", json::array());
    if (!params.is_array() || params.size() != ins.size() - 2) {
      return Malformed(absl::StrCat(where, ": the body takes ", params.size(), " inputs, given ",
                                    ins.size() - 2));
    }
    Scope inner;
    for (size_t k = 0; k < params.size(); ++k) {
      const std::string pname = TensorName(params[k]);
      const std::string aname = TensorName(ins[k + 2].value("arg", json()));
      if (pname.empty() || aname.empty()) {
        return Unsupported(absl::StrCat(where, ": a non-tensor body input"));
      }
      auto s = Use(*scope, json(aname), where);
      if (!s.ok()) return s.status();
      inner[pname] = *s;
    }
    Step push;
    push.name = absl::StrCat(where, " enter");
    push.marker = Step::kPushGrad;
    push.grad_enabled = enabled.get<bool>();
    prog_->steps.push_back(std::move(push));
    if (absl::Status s = CompileNodes(graph.value("nodes", json::array()), &inner, depth + 1);
        !s.ok()) {
      return s;
    }
    Step pop;
    pop.name = absl::StrCat(where, " exit");
    pop.marker = Step::kPopGrad;
    prog_->steps.push_back(std::move(pop));
    // The node's outputs are the body's outputs.
    const json& body_outs = graph.value("outputs", json::array());
    std::vector<std::string> out_names;
    for (const json& o : node.value("outputs", json::array())) {
      if (o.is_object() && o.contains("as_tensors") && o["as_tensors"].is_array()) {
        for (const json& t : o["as_tensors"]) out_names.push_back(t.value("name", ""));
      } else {
        out_names.push_back(TensorName(o));
      }
    }
    if (!body_outs.is_array() || body_outs.size() != out_names.size()) {
      return Malformed(absl::StrCat(where, ": the body returns ", body_outs.size(), " values for ",
                                    out_names.size(), " outputs"));
    }
    for (size_t k = 0; k < out_names.size(); ++k) {
      auto s = Use(inner, json(TensorName(body_outs[k])), where);
      if (!s.ok()) return s.status();
      if (out_names[k].empty()) continue;
      if (scope->count(out_names[k])) {
        return Malformed(absl::StrCat(where, " redefines value '", out_names[k], "'"));
      }
      (*scope)[out_names[k]] = *s;
    }
    return absl::OkStatus();
  }

  const Pt2Archive& archive_;
  torch::Device device_;
  std::shared_ptr<Program> prog_;
  std::map<std::string, size_t> buffer_index_;
  std::vector<std::string> output_names_;
  int next_slot_ = 0;
};

class ExportedModel : public Model {
 public:
  ExportedModel(std::shared_ptr<const Program> prog, std::vector<NamedTensor> params,
                std::vector<NamedTensor> buffers)
      : prog_(std::move(prog)),
        params_(std::move(params)),
        buffers_(std::move(buffers)),
        own_loss_(prog_->own_loss) {}

  v1::ArtifactFormat format() const override { return v1::EXPORTED_PROGRAM; }
  ModelCapabilities capabilities() const override { return {.own_loss = own_loss_}; }

  std::unique_ptr<Model> Clone() const override {
    torch::NoGradGuard no_grad;
    std::vector<NamedTensor> params, buffers;
    for (const auto& p : params_) {
      params.push_back(
          {p.name, p.tensor.detach().clone().requires_grad_(p.tensor.requires_grad())});
    }
    for (const auto& b : buffers_) buffers.push_back({b.name, b.tensor.detach().clone()});
    auto copy = std::make_unique<ExportedModel>(prog_, std::move(params), std::move(buffers));
    copy->training_ = training_;
    copy->targets_ = targets_;
    copy->own_loss_ = own_loss_;
    return copy;
  }

  std::vector<NamedTensor> Parameters() const override { return params_; }
  std::vector<NamedTensor> Buffers() const override { return buffers_; }
  void SetTraining(bool training) override { training_ = training; }

  absl::Status AcceptBatch(const std::vector<torch::jit::IValue>& inputs,
                           const std::vector<std::string>& names,
                           const torch::Tensor& targets) override {
    // A two-output program that takes one input more than the batch has:
    // the extra input is the targets and the second output the loss, whatever
    // its shape (a loss that is not 0-d is then the loss's error, LOSS_ERROR,
    // as for TorchScript's loss() method, not a batch that does not fit).
    if (!own_loss_ && prog_->own_loss_candidate && inputs.size() + 1 == prog_->inputs.size()) {
      own_loss_ = true;
    }
    std::vector<torch::jit::IValue> all = inputs;
    std::vector<std::string> all_names = names;
    if (own_loss_) {
      all.push_back(targets);
      all_names.push_back("targets");
    }
    if (absl::Status s = CheckShapes(all, all_names); !s.ok()) return s;
    if (own_loss_) targets_ = targets;
    return absl::OkStatus();
  }

  absl::StatusOr<torch::jit::IValue> Forward(
      const std::vector<torch::jit::IValue>& inputs) override {
    std::vector<torch::jit::IValue> all = inputs;
    if (own_loss_) {
      if (!targets_.defined()) {
        return absl::FailedPreconditionError("own-loss program run before AcceptBatch");
      }
      all.push_back(targets_);
    }
    if (absl::Status s = CheckShapes(all, {}); !s.ok()) return s;
    auto outs = Run(all);
    if (!outs.ok()) return outs.status();
    if (own_loss_) {
      last_loss_ = (*outs)[1].toTensor();
      last_output_ = (*outs)[0];
      return (*outs)[0];
    }
    if (outs->size() == 1) return (*outs)[0];
    return c10::ivalue::Tuple::create(*std::move(outs));
  }

  absl::StatusOr<torch::Tensor> OwnLoss(const torch::jit::IValue& output,
                                        const torch::Tensor& targets) override {
    if (!own_loss_) {
      return absl::FailedPreconditionError("the program does not return (output, loss)");
    }
    if (!last_output_.isTensor() || !output.isTensor() ||
        !last_output_.toTensor().is_same(output.toTensor()) || !targets.is_same(targets_)) {
      return absl::FailedPreconditionError(
          "an own-loss program's loss is that of its last forward on the bound targets");
    }
    return last_loss_;
  }

  static absl::StatusOr<std::unique_ptr<Model>> Make(std::shared_ptr<Program> prog,
                                                     std::vector<StoredTensor> param_values,
                                                     std::vector<StoredTensor> buffer_values) {
    std::vector<NamedTensor> params, buffers;
    for (size_t i = 0; i < prog->params.size(); ++i) {
      torch::Tensor t = param_values[i].tensor.detach();
      t.requires_grad_(param_values[i].requires_grad);
      params.push_back({prog->params[i].fqn, t});
    }
    for (size_t i = 0; i < prog->buffers.size(); ++i) {
      buffers.push_back({prog->buffers[i].fqn, buffer_values[i].tensor.detach()});
    }
    return std::make_unique<ExportedModel>(std::move(prog), std::move(params), std::move(buffers));
  }

 private:
  absl::Status CheckShapes(const std::vector<torch::jit::IValue>& inputs,
                           const std::vector<std::string>& names) const {
    auto name = [&](size_t i) { return i < names.size() ? names[i] : absl::StrCat("input ", i); };
    if (inputs.size() != prog_->inputs.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the program takes ", prog_->inputs.size(), " tensor input(s)",
          own_loss_ ? " (inputs..., targets)" : "", "; the batch gives ", inputs.size()));
    }
    std::map<std::string, int64_t> bound;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const InputSpec& spec = prog_->inputs[i];
      if (!inputs[i].isTensor()) {
        return absl::InvalidArgumentError(absl::StrCat(name(i), " is not a tensor"));
      }
      const torch::Tensor& t = inputs[i].toTensor();
      auto expected = [&] {
        std::vector<std::string> dims;
        for (size_t d = 0; d < spec.fixed.size(); ++d) {
          if (spec.fixed[d] >= 0) {
            dims.push_back(absl::StrCat(spec.fixed[d]));
          } else if (auto r = prog_->ranges.find(spec.symbol[d]); r != prog_->ranges.end()) {
            dims.push_back(absl::StrCat(spec.symbol[d], " in [", r->second.min, ", ",
                                        r->second.max == std::numeric_limits<int64_t>::max()
                                            ? std::string("inf")
                                            : absl::StrCat(r->second.max),
                                        "]"));
          } else {
            dims.push_back(spec.symbol[d].empty() ? "?" : spec.symbol[d]);
          }
        }
        return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
      };
      auto mismatch = [&](const std::string& why) {
        return absl::InvalidArgumentError(absl::StrCat(name(i), " (program input '", spec.name,
                                                       "') has shape ", c10::str(t.sizes()),
                                                       "; the program expects ", expected(), why));
      };
      if (t.dim() != static_cast<int64_t>(spec.fixed.size())) return mismatch("");
      for (size_t d = 0; d < spec.fixed.size(); ++d) {
        const int64_t size = t.size(d);
        if (spec.fixed[d] >= 0) {
          if (size != spec.fixed[d]) {
            return mismatch(spec.fixed.size() > 0 && d == 0
                                ? " (exported with static shapes: re-export with a dynamic "
                                  "batch dimension, torch.export.Dim, to check other sizes)"
                                : "");
          }
          continue;
        }
        const std::string& sym = spec.symbol[d];
        if (sym.empty()) continue;
        if (auto r = prog_->ranges.find(sym); r != prog_->ranges.end()) {
          if (size < r->second.min || size > r->second.max) return mismatch("");
        }
        auto [it, fresh] = bound.emplace(sym, size);
        if (!fresh && it->second != size) {
          return mismatch(absl::StrCat(" (", sym, " is ", it->second, " in an earlier input)"));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<c10::IValue>> Run(const std::vector<torch::jit::IValue>& inputs) {
    const Program& p = *prog_;
    std::vector<c10::IValue> slots(p.num_slots);
    for (size_t i = 0; i < p.params.size(); ++i) slots[p.params[i].slot] = params_[i].tensor;
    for (size_t i = 0; i < p.buffers.size(); ++i) slots[p.buffers[i].slot] = buffers_[i].tensor;
    for (const auto& [slot, v] : p.constants) slots[slot] = v;
    for (size_t i = 0; i < p.inputs.size(); ++i) slots[p.inputs[i].slot] = inputs[i];
    std::vector<bool> grad_stack;
    torch::jit::Stack stack;
    const Step* current = nullptr;
    try {
      for (const Step& step : p.steps) {
        current = &step;
        if (step.marker == Step::kPushGrad) {
          grad_stack.push_back(c10::GradMode::is_enabled());
          c10::GradMode::set_enabled(step.grad_enabled && grad_stack.back());
          continue;
        }
        if (step.marker == Step::kPopGrad) {
          c10::GradMode::set_enabled(grad_stack.back());
          grad_stack.pop_back();
          continue;
        }
        if (step.train_only && !training_) continue;
        stack.clear();
        for (const Arg& a : step.args) Push(a, slots, &stack);
        step.op->callBoxed(&stack);
        for (size_t k = 0; k < step.outs.size() && k < stack.size(); ++k) {
          const Output& o = step.outs[k];
          if (o.kind == Output::kSlot) {
            slots[o.slot] = std::move(stack[k]);
          } else if (o.kind == Output::kList) {
            auto list = stack[k].toList();
            for (size_t e = 0; e < o.slots.size() && e < list.size(); ++e) {
              if (o.slots[e] >= 0) slots[o.slots[e]] = list.get(e);
            }
          }
        }
      }
      std::vector<c10::IValue> outs;
      for (int s : p.outputs) outs.push_back(slots[s]);
      if (!p.buffer_mutations.empty()) {
        torch::NoGradGuard no_grad;
        for (const auto& [slot, b] : p.buffer_mutations) {
          buffers_[b].tensor.copy_(slots[slot].toTensor());
        }
      }
      return outs;
    } catch (const std::exception& e) {
      if (!grad_stack.empty()) c10::GradMode::set_enabled(grad_stack.front());
      absl::Status s = TorchErrorStatus(e);
      if (current == nullptr) return s;
      return absl::Status(s.code(), absl::StrCat("node '", current->name, "' (", current->target,
                                                 "): ", s.message()));
    }
  }

  void Push(const Arg& a, const std::vector<c10::IValue>& slots, torch::jit::Stack* stack) const {
    switch (a.kind) {
      case Arg::kConst: stack->push_back(a.constant); return;
      case Arg::kTrainFlag: stack->push_back(training_ ? a.constant.toBool() : false); return;
      case Arg::kSlot: stack->push_back(slots[a.slot]); return;
      case Arg::kTensorList: {
        c10::List<at::Tensor> l;
        l.reserve(a.slots.size());
        for (int s : a.slots) l.push_back(slots[s].toTensor());
        stack->push_back(std::move(l));
        return;
      }
      case Arg::kOptTensorList: {
        c10::List<std::optional<at::Tensor>> l;
        l.reserve(a.slots.size());
        for (int s : a.slots) {
          l.push_back(s < 0 ? std::nullopt : std::optional<at::Tensor>(slots[s].toTensor()));
        }
        stack->push_back(std::move(l));
        return;
      }
      case Arg::kSymList: {
        std::vector<int64_t> v(a.ints);
        for (size_t k = 0; k < v.size(); ++k) {
          if (a.slots[k] >= 0) v[k] = slots[a.slots[k]].toInt();
        }
        stack->push_back(c10::IValue(v));
        return;
      }
    }
  }

  std::shared_ptr<const Program> prog_;
  std::vector<NamedTensor> params_, buffers_;
  bool training_ = true;
  // The program's own loss decides: 0-d at load, or a candidate confirmed by
  // the batch (AcceptBatch).
  bool own_loss_ = false;
  torch::Tensor targets_;
  torch::jit::IValue last_output_;
  torch::Tensor last_loss_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadExportedProgram(const std::string& bytes,
                                                           const torch::Device& device) {
  auto archive = exported::ReadPt2Archive(bytes, device);
  if (!archive.ok()) return archive.status();
  std::vector<StoredTensor> params, buffers;
  Compiler compiler(*archive, device);
  absl::StatusOr<std::shared_ptr<Program>> prog;
  try {
    prog = compiler.Compile(&params, &buffers);
  } catch (const std::exception& e) {
    // nlohmann type errors on a malformed document, c10 errors on a schema.
    return absl::InvalidArgumentError(
        absl::StrCat("malformed program: ", TorchErrorStatus(e).message()));
  }
  if (!prog.ok()) return prog.status();
  return ExportedModel::Make(*std::move(prog), std::move(params), std::move(buffers));
}

}  // namespace preflight::engine::internal
