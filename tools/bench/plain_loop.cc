// The floor for the engine benchmark: the plainest LibTorch training loop a
// C++ user would write for the same model, batch, optimizer and steps.
// Prints one JSON line: {"loop_seconds": ..., "total_seconds": ..., "final_loss": ...}.
//
// Usage: preflight_bench_plain_loop MODEL.pt BATCH.pt STEPS [THREADS] [opt|noopt]
//   noopt runs TorchScript op by op, the executor mode the engine pins.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  const auto start = std::chrono::steady_clock::now();
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.pt BATCH.pt STEPS [THREADS] [opt|noopt]\n", argv[0]);
    return 2;
  }
  const int steps = std::atoi(argv[3]);
  at::set_num_threads(argc > 4 ? std::atoi(argv[4]) : 1);
  if (argc > 5 && std::string(argv[5]) == "noopt") torch::jit::setGraphExecutorOptimize(false);
  torch::manual_seed(0);
  torch::jit::Module model = torch::jit::load(argv[1]);
  model.train();
  std::ifstream in(argv[2], std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto batch = torch::pickle_load(bytes).toGenericDict();
  const torch::Tensor x = batch.at("inputs").toTensor();
  const torch::Tensor y = batch.at("targets").toTensor();
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-3));

  const auto loop_start = std::chrono::steady_clock::now();
  double last = 0;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model.forward({x}).toTensor(), y);
    last = loss.item<double>();  // What a user logs; also what the engine records.
    loss.backward();
    opt.step();
  }
  const auto end = std::chrono::steady_clock::now();
  std::printf("{\"loop_seconds\": %.6f, \"total_seconds\": %.6f, \"final_loss\": %.6g}\n",
              std::chrono::duration<double>(end - loop_start).count(),
              std::chrono::duration<double>(end - start).count(), last);
  return 0;
}
