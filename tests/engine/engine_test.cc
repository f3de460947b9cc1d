// Engine tests on hand-made modules (compiled from TorchScript source in C++)
// and hand-made tensors: every bad-input path and each check's trigger.
#include "service/engine/engine.h"

#include <map>
#include <sstream>
#include <string>

#include <caffe2/serialize/inline_container.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "service/engine/batch.h"
#include "service/engine/config.h"
#include "service/engine/loss_fn.h"
#include "service/engine/model_loader.h"
#include "service/engine/overfit.h"
#include "service/engine/report_util.h"
#include "service/engine/torch_error.h"

namespace preflight::engine {
namespace {

using internal::CheckLossInputs;
using internal::LoadBatch;
using internal::LoadModel;
using ::testing::HasSubstr;

torch::Tensor Trainable(const torch::Tensor& t) { return t.detach().requires_grad_(true); }

std::string Save(torch::jit::Module& m) {
  std::ostringstream os;
  m.save(os);
  return os.str();
}

std::string Pickle(const torch::jit::IValue& v) {
  const std::vector<char> data = torch::pickle_save(v);
  return std::string(data.begin(), data.end());
}

std::string DictBatch(const torch::Tensor& inputs, const torch::Tensor& targets) {
  c10::Dict<std::string, torch::Tensor> d;
  d.insert("inputs", inputs);
  d.insert("targets", targets);
  return Pickle(d);
}

// A 2-layer MLP written in TorchScript: forward(x) = relu(x W1 + b1) W2 + b2.
torch::jit::Module Mlp(int in, int hidden, int out, const std::string& extra_body = "",
                       float w1_scale = 1.0f) {
  torch::manual_seed(0);
  torch::jit::Module m("Mlp");
  m.register_parameter("w1", Trainable(torch::randn({in, hidden}) * (w1_scale / std::sqrt(in))),
                       false);
  m.register_parameter("b1", Trainable(torch::zeros({hidden})), false);
  m.register_parameter("w2", Trainable(torch::randn({hidden, out}) / std::sqrt(hidden)), false);
  m.register_parameter("b2", Trainable(torch::zeros({out})), false);
  m.define("def forward(self, x):\n" + extra_body +
           "  h = torch.relu(x.matmul(self.w1) + self.b1)\n"
           "  return h.matmul(self.w2) + self.b2\n");
  return m;
}

std::string ClassBatch(int n, int in, int classes) {
  torch::manual_seed(1);
  return DictBatch(torch::randn({n, in}), torch::randint(0, classes, {n}));
}

v1::CheckConfig Config() {
  v1::CheckConfig c;
  c.set_device("cpu");
  ApplyDefaults(&c);
  return c;
}

std::vector<v1::FindingCode> Codes(const v1::Report& r) {
  std::vector<v1::FindingCode> out;
  for (const auto& f : r.findings()) out.push_back(f.code());
  return out;
}

const v1::Finding* Find(const v1::Report& r, v1::FindingCode code) {
  for (const auto& f : r.findings()) {
    if (f.code() == code) return &f;
  }
  return nullptr;
}

// --- Bad inputs ---------------------------------------------------------------

TEST(LoadModel, RejectsEmptyTruncatedAndGarbage) {
  auto m = Mlp(4, 8, 3);
  const std::string good = Save(m);
  struct Case {
    std::string name, bytes, want;
  } cases[] = {
      {"empty", "", "model file is empty"},
      {"truncated", good.substr(0, good.size() / 2), "not a loadable TorchScript archive"},
      {"garbage", std::string(1000, '\x7f'), "not a loadable TorchScript archive"},
      {"a batch instead", ClassBatch(4, 4, 3), "not a loadable TorchScript archive"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    auto s = LoadModel(tc.bytes, torch::kCPU);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(tc.want));
    // Never a native backtrace as the message.
    EXPECT_THAT(std::string(s.status().message()), ::testing::Not(HasSubstr("frame #")));
  }
  EXPECT_TRUE(LoadModel(good, torch::kCPU).ok());
}

TEST(LoadBatch, RejectsMalformedBatches) {
  c10::Dict<std::string, torch::Tensor> wrong_keys;
  wrong_keys.insert("x", torch::ones({2, 3}));
  wrong_keys.insert("y", torch::zeros({2}));
  c10::impl::GenericDict non_tensor(c10::StringType::get(), c10::AnyType::get());
  non_tensor.insert("inputs", torch::jit::IValue(std::string("image.png")));
  non_tensor.insert("targets", torch::zeros({2}));
  // 10^12 declared elements backed by one stored value (stride 0).
  const auto huge = torch::zeros({1}).expand({1000000, 1000000});

  struct Case {
    std::string name, bytes, want;
  } cases[] = {
      {"empty", "", "batch file is empty"},
      {"garbage", std::string(300, 'z'), "not a torch.save file"},
      {"wrong keys", Pickle(wrong_keys), "found keys: x, y"},
      {"non-tensor inputs", Pickle(non_tensor), "inputs must be a tensor"},
      {"bare tensor", Pickle(torch::ones({3})), "must be a dict"},
      {"3-tuple",
       Pickle(c10::ivalue::Tuple::create({torch::ones({2}), torch::ones({2}), torch::ones({2})})),
       "must be a dict"},
      {"batch size mismatch", DictBatch(torch::ones({4, 3}), torch::zeros({5})),
       "targets have batch size 5 but inputs have 4"},
      {"scalar input", DictBatch(torch::ones({}), torch::zeros({1})), "batch dimension"},
      {"huge shape", DictBatch(huge, torch::zeros({1000000})), "elements"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    auto b = LoadBatch(tc.bytes, torch::kCPU);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(b.status().message()), HasSubstr(tc.want));
  }
}

// A torch.save archive with `pickle` as its data.pkl and these storage
// records (hand-made, as a malicious batch would be).
std::string Archive(const std::string& pickle, const std::map<std::string, size_t>& storages) {
  std::string out;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
      out.append(static_cast<const char*>(p), n);
      return n;
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    for (const auto& [key, bytes] : storages) {
      const std::string zeros(bytes, '\0');
      writer.writeRecord("data/" + key, zeros.data(), zeros.size());
    }
    writer.writeEndOfFile();
  }
  return out;
}

std::string PickledString(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  for (int k = 0; k < 4; ++k) out += static_cast<char>((s.size() >> (8 * k)) & 0xff);
  return out + s;
}

// {"inputs": float[4, 2], "targets": float[4]} pickled as torch.save does,
// the inputs' storage declaring `numel` elements (a pickled integer).
std::string TwoTensorPickle(const std::string& numel) {
  using namespace std::string_literals;
  auto tensor = [](const std::string& key, const std::string& n, const std::string& shape) {
    return "ctorch._utils\n_rebuild_tensor_v2\n(("s + PickledString("storage") +
           "ctorch\nFloatStorage\n" + PickledString(key) + PickledString("cpu") + n + "tQ" +
           "K\x00"s + shape + "\x89" + "ccollections\nOrderedDict\n)R" + "tR";
  };
  return "\x80\x02}("s + PickledString("inputs") +
         tensor("0", numel, "K\x04K\x02\x86K\x02K\x01\x86") + PickledString("targets") +
         tensor("1", "K\x04", "K\x04\x85K\x01\x85") + "u.";
}

// Issue 15: LibTorch's unpickler neither bounds nesting (a 15 KB batch nesting
// 5e6 deep crashed the job with SIGSEGV) nor checks declared storage sizes
// against the file (1e12 went unnoticed). Both are INVALID_ARGUMENT (the
// engine's DATA_INVALID) naming the limit, before LibTorch unpickles.
TEST(LoadBatch, HostilePicklesAreRefusedNamingTheLimit) {
  const std::map<std::string, size_t> storages = {{"0", 32}, {"1", 16}};
  // The hand-made archive itself is sound: with honest sizes it loads.
  auto fine = LoadBatch(Archive(TwoTensorPickle("K\x08"), storages), torch::kCPU);
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->batch_size, 4);

  const std::string deep = std::string("\x80\x02N", 3) + std::string(5'000'000, '\x85') + ".";
  auto nested = LoadBatch(Archive(deep, {}), torch::kCPU);
  ASSERT_FALSE(nested.ok());
  EXPECT_EQ(nested.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nested.status().message()),
              HasSubstr("nests values deeper than 1000 levels (the limit)"));

  // 1e12 elements: LONG1 of 6 bytes, 0x00e8d4a51000 little-endian.
  const std::string huge("\x8a\x06\x00\x10\xa5\xd4\xe8\x00", 8);
  auto declared = LoadBatch(Archive(TwoTensorPickle(huge), storages), torch::kCPU);
  ASSERT_FALSE(declared.ok());
  EXPECT_EQ(declared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(declared.status().message()),
              HasSubstr("declares storage '0' of 1000000000000 elements"));
  EXPECT_THAT(std::string(declared.status().message()), HasSubstr("holds 32 bytes"));
}

TEST(LoadBatch, AcceptsDictTupleAndMultiInput) {
  auto tuple = Pickle(c10::ivalue::Tuple::create({torch::ones({2, 3}), torch::zeros({2})}));
  auto b = LoadBatch(tuple, torch::kCPU);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->batch_size, 2);

  c10::impl::GenericDict multi(c10::StringType::get(), c10::AnyType::get());
  multi.insert("inputs", c10::ivalue::Tuple::create({torch::ones({2, 3}), torch::ones({2, 5})}));
  multi.insert("targets", torch::zeros({2}));
  auto m = LoadBatch(Pickle(multi), torch::kCPU);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->inputs.size(), 2u);
  EXPECT_EQ(m->input_names[1], "inputs[1]");
}

TEST(CheckLossInputs, FlagsEachMismatch) {
  const auto logits = torch::zeros({4, 10});
  struct Case {
    std::string name, loss;
    torch::Tensor out, target;
    v1::FindingCode code;
    std::string want;
  } cases[] = {
      {"class out of range", "cross_entropy", logits, torch::tensor({0, 1, 12, 3}),
       v1::DATA_INVALID, "class index 12 but the model outputs 10 classes"},
      {"negative class", "nll", logits, torch::tensor({0, -3, 1, 3}), v1::DATA_INVALID,
       "class index -3"},
      {"target shape", "cross_entropy", logits, torch::zeros({4, 2}, torch::kLong),
       v1::DATA_INVALID, "needs targets of shape [4]"},
      {"1-d output", "cross_entropy", torch::zeros({4}), torch::zeros({4}, torch::kLong),
       v1::DATA_INVALID, "needs output [N, C, ...]"},
      {"broadcast", "mse", torch::zeros({8, 1}), torch::zeros({8}), v1::LOSS_SHAPE_BROADCAST,
       "broadcast to [8, 8]"},
      {"incompatible", "l1", torch::zeros({8, 3}), torch::zeros({8, 2}), v1::DATA_INVALID,
       "cannot be compared element-wise"},
      {"int targets for mse", "mse", torch::zeros({8}), torch::zeros({8}, torch::kLong),
       v1::DATA_INVALID, "needs floating targets"},
      {"bce target range", "bce_with_logits", torch::zeros({8}), torch::full({8}, 2.0),
       v1::DATA_INVALID, "targets in [0, 1]"},
      {"bce needs probabilities", "bce", torch::full({8}, 3.0), torch::zeros({8}), v1::DATA_INVALID,
       "probabilities in [0, 1]"},
      {"multi-hot rows", "cross_entropy", logits, torch::ones({4, 10}) * 0.2, v1::DATA_INVALID,
       "must sum to 1 over dim 1"},
      {"negative probabilities", "cross_entropy", logits,
       torch::cat({torch::full({4, 1}, -0.5), torch::full({4, 9}, 1.5 / 9)}, 1), v1::DATA_INVALID,
       "must be >= 0"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    const auto problems = CheckLossInputs(tc.loss, tc.out, tc.target);
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_EQ(problems[0].code, tc.code);
    EXPECT_THAT(problems[0].message, HasSubstr(tc.want));
  }
  EXPECT_TRUE(CheckLossInputs("cross_entropy", logits, torch::tensor({0, 1, 9, -100})).empty());
  EXPECT_TRUE(CheckLossInputs("mse", torch::zeros({8, 1}), torch::zeros({8, 1})).empty());
  EXPECT_TRUE(CheckLossInputs("cross_entropy", logits, torch::full({4, 10}, 0.1)).empty());
}

TEST(RunCheck, BadArtifactsAreErrorsWithSpecificFindings) {
  auto m = Mlp(4, 8, 3);
  const std::string model = Save(m);
  const std::string batch = ClassBatch(6, 4, 3);
  struct Case {
    std::string name;
    CheckInput input;
    v1::FindingCode code;
  } cases[] = {
      {"empty model", {"", batch}, v1::ARTIFACT_INVALID},
      {"truncated model", {model.substr(0, 100), batch}, v1::ARTIFACT_INVALID},
      {"empty batch", {model, ""}, v1::DATA_INVALID},
      {"wrong class count", {model, ClassBatch(6, 4, 7)}, v1::DATA_INVALID},
  };
  for (auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    const v1::Report r = RunCheck(Config(), tc.input);
    EXPECT_EQ(r.verdict(), v1::ERROR);
    ASSERT_NE(Find(r, tc.code), nullptr) << r.DebugString();
    EXPECT_FALSE(Find(r, tc.code)->message().empty());
  }
}

// --- Checks on real (small) training runs -------------------------------------

TEST(RunCheck, HealthyMlpPassesAndRecordsEnvironment) {
  auto m = Mlp(32, 64, 5);
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(16, 32, 5)});
  EXPECT_EQ(r.verdict(), v1::PASS) << r.DebugString();
  EXPECT_THAT(Codes(r), ::testing::ElementsAre(v1::OVERFIT_CONVERGED));
  EXPECT_TRUE(r.converged());
  EXPECT_EQ(r.config().loss(), "cross_entropy");
  EXPECT_EQ(r.environment().device(), "cpu");
  EXPECT_EQ(r.environment().intra_op_threads(), 1);
  EXPECT_TRUE(r.environment().deterministic_algorithms());
  EXPECT_EQ(r.environment().cublas_workspace_config(), ":4096:8");
  EXPECT_FALSE(r.environment().torch_version().empty());
  EXPECT_EQ(r.parameters_size(), 4);
  EXPECT_NEAR(r.loss_curve(0), std::log(5.0), 0.5);
}

TEST(RunCheck, LabelSmoothingFloorPassesAsConvergedToFloor) {
  auto m = Mlp(20, 64, 7);
  // Cross-entropy with label smoothing 0.1, written out: its minimum is ~0.45.
  m.define(
      "def loss(self, output, target):\n"
      "  lp = torch.log_softmax(output, 1)\n"
      "  nll = -lp.gather(1, target.unsqueeze(1)).mean()\n"
      "  return 0.9 * nll - 0.1 * lp.mean()\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(16, 20, 7)});
  EXPECT_EQ(r.verdict(), v1::PASS) << r.DebugString();
  const v1::Finding* f = Find(r, v1::CONVERGED_TO_FLOOR);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_EQ(f->severity(), v1::Finding::INFO);
  EXPECT_THAT(f->message(), HasSubstr("100% of samples memorised"));
  EXPECT_FALSE(r.converged());
}

TEST(RunCheck, NanInALoadedWeightIsNamedAtStepZero) {
  auto m = Mlp(16, 32, 4);
  {
    torch::NoGradGuard no_grad;
    m.attr("w1").toTensor()[2][3].fill_(NAN);
  }
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  EXPECT_THAT(Codes(r), ::testing::ElementsAre(v1::PARAM_NON_FINITE));
  EXPECT_THAT(r.findings(0).message(), HasSubstr("parameter w1 has 1 NaN/Inf values"));
  EXPECT_EQ(r.steps_run(), 0);
}

TEST(Train, EarlyStopEndsARunThatMadeNoProgress) {
  auto m = Mlp(16, 32, 4);
  auto model = LoadModel(Save(m), torch::kCPU);
  ASSERT_TRUE(model.ok());
  auto batch = LoadBatch(ClassBatch(8, 16, 4), torch::kCPU);
  ASSERT_TRUE(batch.ok());
  internal::RunOptions o;
  o.loss = "cross_entropy";
  o.lr = 1e-3;
  o.max_steps = 40;
  o.early_stop_step = 10;
  // Still above this level at step 10 (every loss is): stop there.
  o.early_stop_level = 0;
  internal::RunTrace stopped = internal::Train(**model, *batch, o);
  EXPECT_TRUE(stopped.stopped_early);
  EXPECT_EQ(stopped.losses.size(), 11u);
  // Below the level: the run goes on to its budget.
  o.early_stop_level = 1e9;
  internal::RunTrace full = internal::Train(**model, *batch, o);
  EXPECT_FALSE(full.stopped_early);
  EXPECT_EQ(full.losses.size(), 40u);
  EXPECT_GT(full.param_norm_final, 0);
  EXPECT_GT(full.param_norm_initial, 0);
}

TEST(RunCheck, SameInputsGiveIdenticalReportsApartFromTiming) {
  auto m = Mlp(16, 32, 4);
  const CheckInput in{Save(m), ClassBatch(8, 16, 4)};
  v1::Report a = RunCheck(Config(), in);
  v1::Report b = RunCheck(Config(), in);
  a.clear_timing();
  b.clear_timing();
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
}

TEST(RunCheck, UnusedParameterIsParamNoGrad) {
  auto m = Mlp(16, 32, 4);
  m.register_parameter("unused", Trainable(torch::ones({7})), false);
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::PARAM_NO_GRAD);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_EQ(f->severity(), v1::Finding::WARN);
  EXPECT_THAT(f->message(), HasSubstr("unused"));
  EXPECT_EQ(r.verdict(), v1::WARN);
}

TEST(RunCheck, NanFromForwardIsFirstNonFiniteOutput) {
  auto m = Mlp(16, 32, 4, "  x = torch.log(x)\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  const v1::Finding* f = Find(r, v1::OUTPUT_NON_FINITE);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("step 0"));
  EXPECT_NE(Find(r, v1::LOSS_DIVERGED), nullptr);
}

TEST(RunCheck, InfiniteGradientNamesParameterAndBackwardOp) {
  torch::manual_seed(0);
  torch::jit::Module m("DistNet");
  m.register_parameter("w1", Trainable(torch::randn({16, 8}) / 4), false);
  m.register_parameter("w2", Trainable(torch::randn({9, 4}) / 3), false);
  // Pairwise distances: sqrt(0) on the diagonal, NaN in backward.
  m.define(
      "def forward(self, x):\n"
      "  h = x.matmul(self.w1)\n"
      "  d = torch.sqrt(((h.unsqueeze(1) - h.unsqueeze(0)) ** 2).sum(-1))\n"
      "  return torch.cat([h, d.mean(1, keepdim=True)], 1).matmul(self.w2)\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::GRAD_NON_FINITE);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("w1"));
  std::string anomaly;
  for (const auto& e : f->evidence()) {
    if (e.name() == "anomaly_mode") anomaly = e.text();
  }
  // sqrt'(0) = inf meets d(h^2)/dh = 0 in PowBackward: inf * 0 = NaN.
  EXPECT_THAT(anomaly, HasSubstr("PowBackward0"));
  EXPECT_THAT(anomaly, HasSubstr("returned nan values"));
}

TEST(RunCheck, LargeInitLogitsAreSuspicious) {
  auto m = Mlp(32, 64, 10);
  m.define("def scaled(self, x):\n  return self.forward(x) * 100.0\n");
  torch::jit::Module wrapper("Wrapper");
  wrapper.register_module("inner", m);
  wrapper.define("def forward(self, x):\n  return self.inner.forward(x) * 100.0\n");
  const v1::Report r = RunCheck(Config(), {Save(wrapper), ClassBatch(16, 32, 10)});
  const v1::Finding* f = Find(r, v1::INIT_LOSS_SUSPICIOUS);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("ln C = ln 10"));
}

// A ReLU recurrence h <- relu(x_t W_in + h W_rec) with W_rec = gain * I over
// `steps` time steps, then a linear head: with gain 3 the output grows ~3^T.
torch::jit::Module Recurrence(double gain, int steps, int in = 4, int hidden = 16,
                              int classes = 4) {
  torch::manual_seed(0);
  auto linear = [](const std::string& name, torch::Tensor w) {
    torch::jit::Module m(name);
    m.register_parameter("weight", Trainable(w), false);
    m.define("def forward(self, x):\n  return x.matmul(self.weight)\n");
    return m;
  };
  torch::jit::Module root("Recurrence");
  root.register_module("inp", linear("Inp", torch::randn({in, hidden}) / std::sqrt(in)));
  root.register_module("rec", linear("Rec", gain * torch::eye(hidden)));
  root.register_module("head", linear("Head", torch::randn({hidden, classes}) / std::sqrt(hidden)));
  root.define(
      absl::StrCat("def forward(self, x):\n"
                   "  h = torch.zeros(x.size(0), ",
                   hidden, ")\n", "  for t in range(", steps,
                   "):\n"
                   "    h = torch.relu(self.inp.forward(x[:, t]) + self.rec.forward(h))\n"
                   "  return self.head.forward(h)\n"));
  return root;
}

std::string SequenceBatch(int n, int steps, int in, int classes) {
  torch::manual_seed(1);
  return DictBatch(torch::randn({n, steps, in}), torch::randint(0, classes, {n}));
}

TEST(ForwardRecordingModules, RecordsEveryCallInOrderAndLeavesTheModelAlone) {
  torch::jit::Module m = Recurrence(3.0, 5);
  auto model = LoadModel(Save(m), torch::kCPU);
  ASSERT_TRUE(model.ok()) << model.status();
  auto batch = LoadBatch(SequenceBatch(8, 5, 4, 4), torch::kCPU);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const auto before = (*model)->Forward(batch->inputs);
  ASSERT_TRUE(before.ok());

  auto calls = (*model)->ForwardRecordingModules(batch->inputs);
  ASSERT_TRUE(calls.ok()) << calls.status();
  std::vector<std::string> names;
  for (const ModuleCall& c : *calls) names.push_back(c.module);
  EXPECT_THAT(names, ::testing::ElementsAre("inp", "rec", "inp", "rec", "inp", "rec", "inp", "rec",
                                            "inp", "rec", "head"));
  // From h = 0 the recurrent output triples per step once h is positive.
  EXPECT_EQ((*calls)[1].rms, 0.0);
  EXPECT_GT((*calls)[9].rms, 2.5 * (*calls)[7].rms);

  // The model itself is not instrumented: a clone still runs plainly and
  // gives the same output.
  auto clone = (*model)->Clone();
  const auto after = clone->Forward(batch->inputs);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(torch::equal(before->toTensor(), after->toTensor()));
}

TEST(RunCheck, ExplodingRecurrenceIsNamedAndVerifiedBySmallerInit) {
  // 56 steps of gain 3 (logits ~1e25): too large for Adam to fit by sorting
  // the huge logits (at 24 steps, ~1e11, it does, with a WARN).
  v1::CheckConfig c = Config();
  c.set_determinism_steps(0);
  torch::jit::Module m = Recurrence(3.0, 56, 8, 32, 5);
  const v1::Report r = RunCheck(c, {Save(m), SequenceBatch(16, 56, 8, 5)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  const v1::Finding* f = Find(r, v1::EXPLODING_ACTIVATIONS);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_EQ(f->severity(), v1::Finding::FAIL);
  // h starts at 0; the recurrence triples it per step from then on.
  EXPECT_THAT(f->message(), HasSubstr("is rec (call 8 of 56, its output growing 3"));
  EXPECT_THAT(f->hint(), HasSubstr("Verified: smaller_init (rec's weights x0.1) makes the loss "
                                   "converge"));
  // The explosion is reported instead of its symptom.
  EXPECT_EQ(Find(r, v1::INIT_LOSS_SUSPICIOUS), nullptr) << r.DebugString();
  ASSERT_GT(r.experiments_size(), 0);
  EXPECT_EQ(r.experiments(0).name(), "smaller_init");
  EXPECT_EQ(r.experiments(0).outcome(), v1::Experiment::CONFIRMED);
}

TEST(RunCheck, ModerateRecurrenceIsNotExploding) {
  v1::CheckConfig c = Config();
  c.set_max_steps(50);
  c.set_determinism_steps(0);
  c.set_diagnose(false);
  torch::jit::Module m = Recurrence(0.5, 24);
  const v1::Report r = RunCheck(c, {Save(m), SequenceBatch(8, 24, 4, 4)});
  EXPECT_EQ(Find(r, v1::EXPLODING_ACTIVATIONS), nullptr) << r.DebugString();
}

TEST(RunCheck, ConstantOutputIgnoresInput) {
  auto m = Mlp(16, 32, 4, "  x = x * 0.0\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  EXPECT_NE(Find(r, v1::OUTPUT_IGNORES_INPUT), nullptr) << r.DebugString();
  EXPECT_EQ(r.verdict(), v1::FAIL);
}

TEST(RunCheck, ExplodingPerLayerGradientRatio) {
  // The first layer's weights are tiny and the second's huge: the first
  // layer's gradient RMS is ~1e6x the last's at step 0.
  auto m = Mlp(16, 32, 4, "", /*w1_scale=*/1e-3f);
  for (auto p : m.named_parameters()) {
    if (p.name == "w2") p.value.data().mul_(1e3);
  }
  v1::CheckConfig c = Config();
  c.set_max_steps(5);
  c.set_determinism_steps(5);  // Valid only up to max_steps (RunCheck validates).
  c.set_diagnose(false);
  const v1::Report r = RunCheck(c, {Save(m), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::EXPLODING_GRADIENT);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("first layer (w1"));
}

TEST(RunCheck, NegatedLossIsConfirmedForALogLikelihoodObjective) {
  auto m = Mlp(16, 32, 4);
  m.define(
      "def loss(self, out, t):\n"
      "  return torch.log_softmax(out, 1).gather(1, t.unsqueeze(1)).mean()\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  EXPECT_EQ(r.config().loss(), "model.loss");
  const v1::Finding* f = Find(r, v1::LOSS_DIVERGED);
  ASSERT_NE(f, nullptr) << r.DebugString();
  ASSERT_GE(r.experiments_size(), 1);
  EXPECT_EQ(r.experiments(0).name(), "negated_loss");
  EXPECT_EQ(r.experiments(0).outcome(), v1::Experiment::CONFIRMED);
  EXPECT_THAT(f->hint(), HasSubstr("Verified: negated_loss"));
}

TEST(RunCheck, InPlaceInputMutationIsNondeterministic) {
  auto m = Mlp(16, 32, 4, "  x.add_(0.1)\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::NONDETERMINISTIC);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("modified inputs in place"));
  EXPECT_THAT(f->message(), HasSubstr("step 0"));
}

// A Linear layer as a submodule, so its parameters are "<name>.weight" and
// "<name>.bias" like nn.Linear's.
torch::jit::Module Linear(int in, int out) {
  torch::jit::Module l("Linear");
  l.register_parameter("weight", Trainable(torch::randn({out, in}) / std::sqrt(in)), false);
  l.register_parameter("bias", Trainable(torch::zeros({out})), false);
  l.define("def forward(self, x):\n  return x.matmul(self.weight.t()) + self.bias\n");
  return l;
}

TEST(RunCheck, NegativeBiasKillsUnits) {
  torch::manual_seed(0);
  torch::jit::Module m("Net");
  auto fc1 = Linear(32, 64);
  for (auto p : fc1.named_parameters()) {
    if (p.name == "bias") p.value.data().slice(0, 0, 48).fill_(-10.0);  // 75% of units.
  }
  m.register_module("fc1", fc1);
  m.register_module("fc2", Linear(64, 5));
  m.define("def forward(self, x):\n  return self.fc2.forward(torch.relu(self.fc1.forward(x)))\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(16, 32, 5)});
  const v1::Finding* f = Find(r, v1::DEAD_UNITS);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("48 of 64 units (75%) of fc1"));
  EXPECT_DOUBLE_EQ(r.gradient_flow().max_dead_unit_share(), 0.75);
}

TEST(RunCheck, SoftmaxOutputsLookLikeProbabilities) {
  auto m = Mlp(16, 32, 4);
  torch::jit::Module wrapper("Softmaxed");
  wrapper.register_module("inner", m);
  wrapper.define("def forward(self, x):\n  return torch.softmax(self.inner.forward(x), 1)\n");
  const v1::Report r = RunCheck(Config(), {Save(wrapper), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::OUTPUTS_LOOK_LIKE_PROBABILITIES);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("sum to 1"));
}

TEST(RunCheck, BroadcastingRegressionShapesFail) {
  torch::manual_seed(0);
  torch::jit::Module m("Reg");
  m.register_parameter("w", Trainable(torch::randn({8, 1}) / 3), false);
  m.define("def forward(self, x):\n  return x.matmul(self.w)\n");
  v1::CheckConfig c = Config();
  c.set_loss("mse");
  const auto x = torch::randn({16, 8});
  const v1::Report r = RunCheck(c, {Save(m), DictBatch(x, x.select(1, 0))});
  const v1::Finding* f = Find(r, v1::LOSS_SHAPE_BROADCAST);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_EQ(f->severity(), v1::Finding::FAIL);
  EXPECT_THAT(f->message(), HasSubstr("broadcast to [16, 16]"));
}

TEST(RunCheck, DeepSigmoidStackVanishes) {
  torch::manual_seed(0);
  torch::jit::Module m("Deep");
  std::string body = "def forward(self, x):\n  h = x\n";
  for (int i = 0; i < 12; ++i) {
    const std::string w = "w" + std::to_string(i);
    m.register_parameter(w, Trainable(torch::randn({16, 16}) / 4), false);
    body += "  h = torch.sigmoid(h.matmul(self." + w + "))\n";
  }
  m.register_parameter("head", Trainable(torch::randn({16, 4}) / 4), false);
  body += "  return h.matmul(self.head)\n";
  m.define(body);
  v1::CheckConfig c = Config();
  c.set_max_steps(3);
  c.set_determinism_steps(3);  // Valid only up to max_steps (RunCheck validates).
  c.set_diagnose(false);
  const v1::Report r = RunCheck(c, {Save(m), ClassBatch(8, 16, 4)});
  const v1::Finding* f = Find(r, v1::VANISHING_GRADIENT);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_LT(r.gradient_flow().first_last_grad_rms_ratio(), 1e-4);
}

TEST(RunCheck, FrozenModelHasNothingToTrain) {
  auto m = Mlp(8, 8, 2);
  for (auto p : m.parameters()) p.requires_grad_(false);
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(4, 8, 2)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  EXPECT_THAT(Codes(r), ::testing::ElementsAre(v1::NO_TRAINABLE_PARAMS));
}

TEST(RunCheck, DataNonFiniteNamesTensorAndCount) {
  auto m = Mlp(8, 8, 2);
  auto x = torch::randn({4, 8});
  x[1][2] = NAN;
  x[3][0] = INFINITY;
  const v1::Report r = RunCheck(Config(), {Save(m), DictBatch(x, torch::zeros({4}, torch::kLong))});
  const v1::Finding* f = Find(r, v1::DATA_NON_FINITE);
  ASSERT_NE(f, nullptr);
  EXPECT_THAT(f->message(), HasSubstr("inputs has 2 NaN/Inf values out of 32"));
}

TEST(RunCheck, UnavailableCudaDeviceIsAnError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU is present";
  auto m = Mlp(8, 8, 2);
  v1::CheckConfig c = Config();
  c.set_device("cuda:0");
  const v1::Report r = RunCheck(c, {Save(m), ClassBatch(4, 8, 2)});
  EXPECT_EQ(r.verdict(), v1::ERROR);
  ASSERT_NE(Find(r, v1::DEVICE_UNAVAILABLE), nullptr);
}

// An MLP whose hidden activations are scaled by 1e5 before the second
// matmul and scaled back after: fine in fp32 (and bf16, which has fp32's
// range), but the cast to fp16 that autocast applies to the matmul's input
// overflows (fp16's largest finite value is 65504).
torch::jit::Module ScaledHiddenMlp() {
  torch::manual_seed(0);
  torch::jit::Module m("ScaledHiddenMlp");
  m.register_parameter("w1", Trainable(torch::randn({16, 32}) / 4.0), false);
  m.register_parameter("b1", Trainable(torch::zeros({32})), false);
  m.register_parameter("w2", Trainable(torch::randn({32, 4}) / std::sqrt(32.0)), false);
  m.register_parameter("b2", Trainable(torch::zeros({4})), false);
  m.define(
      "def forward(self, x):\n"
      "  h = torch.relu(x.matmul(self.w1) + self.b1) * 1.0e5\n"
      "  return h.matmul(self.w2) * 1.0e-5 + self.b2\n");
  return m;
}

TEST(RunCheck, Fp16AutocastOverflowIsNamedAgainstAnFp32Replay) {
  auto m = ScaledHiddenMlp();
  const std::string batch = ClassBatch(8, 16, 4);
  const v1::Report fp32 = RunCheck(Config(), {Save(m), batch});
  EXPECT_EQ(fp32.verdict(), v1::PASS) << fp32.DebugString();

  v1::CheckConfig c = Config();
  c.set_dtype("fp16");
  const v1::Report r = RunCheck(c, {Save(m), batch});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  const v1::Finding* f = Find(r, v1::MIXED_PRECISION_OVERFLOW);
  ASSERT_NE(f, nullptr) << r.DebugString();
  EXPECT_THAT(f->message(), HasSubstr("under fp16 autocast"));
  EXPECT_THAT(f->message(), HasSubstr("step 0"));
  EXPECT_EQ(r.config().dtype(), "fp16");
}

TEST(RunCheck, NanInFp32TooIsNotAPrecisionFault) {
  auto m = Mlp(16, 32, 4, "  x = torch.log(x)\n");
  v1::CheckConfig c = Config();
  c.set_dtype("fp16");
  const v1::Report r = RunCheck(c, {Save(m), ClassBatch(8, 16, 4)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  EXPECT_NE(Find(r, v1::OUTPUT_NON_FINITE), nullptr) << r.DebugString();
  EXPECT_EQ(Find(r, v1::MIXED_PRECISION_OVERFLOW), nullptr) << r.DebugString();
}

TEST(RunCheck, UnknownDtypeIsAConfigError) {
  auto m = Mlp(8, 8, 2);
  v1::CheckConfig c = Config();
  c.set_dtype("fp8");
  const v1::Report r = RunCheck(c, {Save(m), ClassBatch(4, 8, 2)});
  EXPECT_EQ(r.verdict(), v1::ERROR);
  const v1::Finding* f = Find(r, v1::CONFIG_INVALID);
  ASSERT_NE(f, nullptr);
  EXPECT_THAT(f->message(), HasSubstr("dtype"));
}

TEST(RunCheck, CpuRunsReportNoDeviceMemory) {
  auto m = Mlp(8, 8, 2);
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(4, 8, 2)});
  EXPECT_EQ(r.timing().peak_device_memory_bytes(), 0);
}

TEST(TorchError, DeviceAssertIsRecognisedByErrorCodeOrMessage) {
  internal::ResetOutOfMemory();
  const c10::AcceleratorError by_code({__func__, __FILE__, __LINE__}, 710, "CUDA error: 710");
  EXPECT_TRUE(internal::IsDeviceAssert(by_code));
  const c10::AcceleratorError other_code({__func__, __FILE__, __LINE__}, 2, "out of memory");
  EXPECT_FALSE(internal::IsDeviceAssert(other_code));
  const std::runtime_error by_text("CUDA error: device-side assert triggered");
  EXPECT_TRUE(internal::IsDeviceAssert(by_text));
  EXPECT_FALSE(internal::IsDeviceAssert(std::runtime_error("index out of range in self")));
  EXPECT_FALSE(internal::DeviceAssertMessage().has_value());
  (void)internal::TorchErrorStatus(by_code);
  EXPECT_TRUE(internal::DeviceAssertMessage().has_value());
  internal::ResetOutOfMemory();
  EXPECT_FALSE(internal::DeviceAssertMessage().has_value());
}

// On a GPU the error comes from the CUDA runtime at the next synchronising
// call; here a model raises LibTorch's text for it, which takes the same
// path from the exception on: one DEVICE_ASSERT finding with the CPU replay.
TEST(RunCheck, DeviceAssertReplacesItsConsequencesWithOneFinding) {
  auto m = Mlp(8, 8, 2,
               "  assert bool(x.sum() < -1.0e30), 'CUDA error: device-side assert triggered'\n");
  const v1::Report r = RunCheck(Config(), {Save(m), ClassBatch(4, 8, 2)});
  EXPECT_EQ(r.verdict(), v1::FAIL);
  ASSERT_EQ(r.findings_size(), 1) << r.DebugString();
  EXPECT_EQ(r.findings(0).code(), v1::DEVICE_ASSERT);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("on CPU: forward raised"));
}

}  // namespace
}  // namespace preflight::engine
