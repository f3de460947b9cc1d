// The zygote: a long-lived worker process that has loaded LibTorch once and
// forks one sandboxed child per job (~ms instead of ~1 s for a new process).
//
// Fork safety: the zygote is single-threaded and never runs a LibTorch op or
// touches CUDA, so forking it is safe; every child initialises its own
// OpenMP pool and, for GPU jobs, its own CUDA context.
//
// Protocol (framing.h frames on `control_fd`): the zygote sends WorkerHello,
// then reads WorkerJob frames and answers each with one WorkerResult, in
// completion order. It enforces every job's wall-clock deadline itself.
// It exits 0 when the control socket closes, killing any running children.
#pragma once

namespace preflight::worker {

int RunZygote(int control_fd);

}  // namespace preflight::worker
