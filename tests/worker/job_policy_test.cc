// The per-job policy: what a CPU job and a CUDA job on a GPU node may touch.
// No GPU here: the NVIDIA device nodes are stand-in files in a temp dir.
#include "service/worker/job_policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <tuple>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

class FakeDev : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/preflight-fakedev-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  void Touch(const std::string& name) { std::ofstream(dir_ + "/" + name) << ""; }
  std::string dir_;
};

TEST_F(FakeDev, FindsExactlyTheNvidiaNodes) {
  for (const char* n : {"nvidiactl", "nvidia0", "nvidia12", "nvidia-uvm", "nvidia-uvm-tools",
                        "nvidia-modeset", "null", "sda", "nvidiafoo", "nvidia", "urandom"}) {
    Touch(n);
  }
  ASSERT_EQ(mkdir((dir_ + "/nvidia-caps").c_str(), 0755), 0);
  Touch("nvidia-caps/nvidia-cap1");
  EXPECT_THAT(FindNvidiaDevices(dir_),
              ElementsAre(dir_ + "/nvidia-caps/nvidia-cap1", dir_ + "/nvidia-modeset",
                          dir_ + "/nvidia-uvm", dir_ + "/nvidia-uvm-tools", dir_ + "/nvidia0",
                          dir_ + "/nvidia12", dir_ + "/nvidiactl"));
}

TEST_F(FakeDev, CpuOnlyNodeHasNone) {
  Touch("null");
  EXPECT_THAT(FindNvidiaDevices(dir_), IsEmpty());
  EXPECT_THAT(FindNvidiaDevices(dir_ + "/missing"), IsEmpty());
}

TEST(MayUseCuda, OnlyDevicesThatCanResolveToCuda) {
  EXPECT_TRUE(MayUseCuda("auto"));
  EXPECT_TRUE(MayUseCuda(""));
  EXPECT_TRUE(MayUseCuda("cuda"));
  EXPECT_TRUE(MayUseCuda("cuda:3"));
  EXPECT_FALSE(MayUseCuda("cpu"));
  EXPECT_FALSE(MayUseCuda("cudax"));
}

v1::WorkerJob Job(const std::string& device) {
  v1::WorkerJob job;
  job.set_memory_limit_bytes(int64_t{8} << 30);
  job.mutable_config()->set_timeout_seconds(10);
  job.mutable_config()->set_device(device);
  return job;
}

TEST(JobPolicy, CpuJobGetsTheFullCpuSandbox) {
  const SandboxPolicy p = JobPolicy(Job("cpu"), {"/lib"}, {"/dev/nvidiactl"}, 4, 7);
  EXPECT_THAT(p.readable_files, ElementsAre("/dev/urandom"))
      << "the inputs come as descriptors: no store path is readable";
  EXPECT_THAT(p.readable_dirs, ElementsAre("/lib"));
  EXPECT_THAT(p.device_files, IsEmpty()) << "a CPU job never sees the GPU, even on a GPU node";
  EXPECT_EQ(p.address_space_bytes, int64_t{8} << 30);
  EXPECT_EQ(p.cpu_seconds, 41) << "10 s wall x 4 CPUs + 1";
  EXPECT_EQ(p.keep_fd, 7);
}

TEST(JobPolicy, CudaJobOnGpuNodeGetsTheDevicesAndNoAddressSpaceLimit) {
  const SandboxPolicy p =
      JobPolicy(Job("auto"), {"/lib"}, {"/dev/nvidia0", "/dev/nvidiactl"}, 2, 7);
  EXPECT_THAT(p.device_files, ElementsAre("/dev/nvidia0", "/dev/nvidiactl"));
  EXPECT_EQ(p.address_space_bytes, 0);
  EXPECT_THAT(p.readable_dirs, ::testing::Contains("/proc/driver/nvidia"));
  EXPECT_THAT(p.readable_files, ElementsAre("/dev/urandom"))
      << "the inputs come as descriptors: no store path is readable";
}

TEST(JobPolicy, CudaJobOnCpuNodeKeepsTheCpuSandbox) {
  const SandboxPolicy p = JobPolicy(Job("cuda:0"), {"/lib"}, {}, 2, 7);
  EXPECT_THAT(p.device_files, IsEmpty());
  EXPECT_EQ(p.address_space_bytes, int64_t{8} << 30);
}

TEST(DescribePolicy, SaysWhatTheJobRanUnder) {
  SandboxPolicy p = JobPolicy(Job("cpu"), {"/lib", "/usr/lib"}, {}, 2, 7);
  EXPECT_EQ(DescribePolicy(p, 3),
            "landlock v3 (read: inputs + 2 dirs; write: nothing), seccomp deny-list, "
            "rlimits: address space 8192 MiB, cpu 21 s, files 0 B, 64 fds");
  p = JobPolicy(Job("auto"), {"/lib"}, {"/dev/nvidia0"}, 2, 7);
  EXPECT_THAT(DescribePolicy(p, 0), ::testing::HasSubstr("no landlock"));
  EXPECT_THAT(DescribePolicy(p, 0), ::testing::HasSubstr("address space unlimited (CUDA"));
}

v1::Report CheckedOn(const std::string& device) {
  v1::Report r;
  r.mutable_environment()->set_device(device);
  r.add_findings()->set_code(v1::OVERFIT_CONVERGED);
  r.mutable_findings(0)->set_severity(v1::Finding::INFO);
  r.set_verdict(v1::PASS);
  return r;
}

TEST(NoteCudaFallback, GpuNodeAutoOnCpuIsAWarning) {
  const SandboxPolicy p = JobPolicy(Job("auto"), {}, {"/dev/nvidia0", "/dev/nvidiactl"}, 2, 7);
  v1::Report r = CheckedOn("cpu");
  NoteCudaFallback(p, Job("auto").config(), &r);
  ASSERT_EQ(r.findings_size(), 2);
  EXPECT_EQ(r.findings(1).code(), v1::DEVICE_UNAVAILABLE);
  EXPECT_EQ(r.findings(1).severity(), v1::Finding::WARN);
  EXPECT_THAT(r.findings(1).message(), ::testing::HasSubstr("2 device nodes"));
  EXPECT_EQ(r.verdict(), v1::WARN);
}

TEST(NoteCudaFallback, NothingToSayOtherwise) {
  const SandboxPolicy gpu = JobPolicy(Job("auto"), {}, {"/dev/nvidia0"}, 2, 7);
  const SandboxPolicy cpu_node = JobPolicy(Job("auto"), {}, {}, 2, 7);
  for (const auto& [policy, device, resolved] :
       {std::tuple{gpu, "auto", "cuda:0"}, std::tuple{cpu_node, "auto", "cpu"},
        std::tuple{gpu, "auto", ""}}) {
    v1::Report r = CheckedOn(resolved);
    NoteCudaFallback(policy, Job(device).config(), &r);
    EXPECT_EQ(r.findings_size(), 1) << device << " -> " << resolved;
    EXPECT_EQ(r.verdict(), v1::PASS);
  }
}

}  // namespace
}  // namespace preflight::worker
