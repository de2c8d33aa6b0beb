// rigserve serve / coordinator / worker.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_split.h"
#include "coordinator/daemon.h"
#include "coordinator/engine.h"
#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"
#include "coordinator/worker_metrics.h"
#include "coordinator/rendezvous_service.h"
#include "coordinator/worker_link.h"
#include "worker/args.h"
#include "worker/model.h"
#include "worker/model_loader.h"
#include "worker/service/worker_service.h"
#ifdef RIGSERVE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace rs::cli {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

void Log(const char* fmt, auto... args) {
  std::fprintf(stderr, "rigserve: ");
  std::fprintf(stderr, fmt, args...);
  std::fprintf(stderr, "\n");
}

bool ParseInt(const Args& a, const std::string& name, int64_t lo, int64_t* out) {
  if (!absl::SimpleAtoi(a.get(name), out) || *out < lo) {
    a.usage_error("--" + name + " must be an integer >= " + std::to_string(lo));
    return false;
  }
  return true;
}

void AddWorkerOptions(Args& a) {
  a.opt("model", "GGUF model file")
      .opt("synthetic", "in-memory random model PRESET:QUANT instead of a file")
      .opt("backend", "reference | cpu | cuda", "cpu")
      .opt("device", "cpu | cuda:N: where the model runs (cuda:N = the CUDA backend on GPU N; "
           "default cpu, or cuda:0 with --backend cuda); serve --local-workers: also a comma "
           "list, one per worker (default with --backend cuda: worker i on GPU i mod the GPUs)")
      .opt("threads", "CPU threads (0 = all cores)", "0")
      .opt("kv-type", "KV cache type f16 | q8_0 | f32 (default f16; f32 for F32 models)")
      .flag("no-prefault", "do not read the weights in at start-up (first requests will)");
}

void AddEngineOptions(Args& a) {
  a.opt("metrics-port", "Prometheus /metrics port on the listen host (0 = any free port, -1 = off)", "9400")
      .opt("max-running", "sequences decoding at once", "16")
      .opt("max-waiting", "queued requests before RESOURCE_EXHAUSTED", "1024")
      .opt("max-kept", "finished conversation states kept for the next turn (LRU)", "8")
      .opt("step-tokens", "token budget of one step (decodes + prefill chunks)", "512")
      .opt("prefill-chunk", "largest prefill piece of one sequence per step", "256")
      .opt("context", "context length limit (0 = the model's)", "0")
      .opt("default-max-tokens", "max_tokens when a request sets none", "256")
      .opt("step-timeout", "seconds before a worker that does not answer a step is declared down", "30")
      .opt("layers", "layers per worker with several workers, e.g. 0-15,16-31,32-47 (default: the "
           "placement planner's ranges)")
      .opt("placement", "several workers: plan (layer ranges and experts from the placement planner, "
           "fed with the tensor table and each worker's memory; as `rigserve plan`) | even "
           "(even layer split, experts round-robin)", "plan")
      .opt("collective-timeout-ms", "timeout of the workers' collectives", "10000")
      .opt("data-plane", "where a group's activations move: auto (NCCL between the GPUs when every "
           "worker has one of its own), nccl (ask every worker; all fall back to Gloo together if "
           "one cannot), host (Gloo, host memory)", "auto");
}

// Reads the weights in once, logging bytes, percent and time (mmap would otherwise load them
// lazily during the first requests).
void Prefault(const gguf::File& f, Metrics* m) {
  const uint64_t total = f.data_size();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t done = 0, next_report = 0;
  volatile uint8_t sink = 0;
  for (const auto& t : f.tensors()) {
    const uint8_t* p = f.tensor_data(t);
    for (uint64_t i = 0; i < t.size; i += 4096) sink = sink ^ p[i];
    done += t.size;
    // data_size() also counts the alignment padding between tensors: the last one ends at 100%.
    const bool last = &t == &f.tensors().back();
    if (last && done < total) done = total;
    if (done >= next_report || last) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      Log("loading weights: %.1f / %.1f MiB (%.0f%%) in %.1f s", done / 1048576.0, total / 1048576.0,
          total ? 100.0 * done / total : 100.0, s);
      if (m) m->model_load_progress->Set(total ? static_cast<double>(done) / total : 1.0);
      next_report = done + total / 10 + 1;
    }
  }
  if (m) m->model_load_progress->Set(1.0);
}

// --device cpu|cuda:N (with --backend): the backend and CUDA device of the model options, and
// the device part of the inventory. For cuda the GPU is probed before the model loads (its free
// memory is what the coordinator plans with); a build or machine without a usable GPU is an
// error naming the reason.
absl::Status ApplyDevice(const Args& a, ModelOptions* o, WorkerInventory* inv) {
  std::string dev = a.get("device");
  if (dev.empty()) dev = o->backend == Backend::kCuda ? "cuda:0" : "cpu";
  if (dev == "cpu") {
    if (o->backend == Backend::kCuda)
      return absl::InvalidArgumentError("--device cpu contradicts --backend cuda");
    inv->device = "cpu";
    return absl::OkStatus();
  }
  absl::string_view idx_s(dev);
  int idx = -1;
  if (!absl::ConsumePrefix(&idx_s, "cuda:") || !absl::SimpleAtoi(idx_s, &idx) || idx < 0)
    return absl::InvalidArgumentError(absl::StrCat("--device must be cpu or cuda:N (N >= 0), got '", dev, "'"));
  if (a.has("backend") && o->backend != Backend::kCuda)
    return absl::InvalidArgumentError(absl::StrCat("--device ", dev, " contradicts --backend ", a.get("backend")));
  o->backend = Backend::kCuda;
  o->cuda_device = idx;
#ifdef RIGSERVE_HAVE_CUDA
  std::string why;
  if (!cuda::cuda_available(&why))
    return absl::FailedPreconditionError(absl::StrCat("--device ", dev, ": no usable GPU: ", why));
  auto info = cuda::device_info(idx);
  if (!info.ok())
    return absl::FailedPreconditionError(absl::StrCat("--device ", dev, ": GPU ", idx, " cannot be used: ",
                                                      info.status().message()));
  inv->device_name = info->name;
  inv->device_free = info->free_mem;
  inv->device_total = info->total_mem;
  Log("device %s: %s, %.2f GiB free of %.2f GiB", dev.c_str(), info->name.c_str(),
      info->free_mem / 1073741824.0, info->total_mem / 1073741824.0);
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "--device ", dev, ": this rigserve was built without CUDA (no nvcc at configure time, or "
      "-DRIGSERVE_WITH_CUDA=OFF), so it cannot use a GPU; use --device cpu"));
#endif
  inv->device = dev;
  return absl::OkStatus();
}

struct LoadedWorker {
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<WorkerServiceImpl> service;
  int threads = 0;
};

// deferred_cuda: a worker process that may join a group makes its GPU copy when the
// coordinator's Load says which layers it runs (or at its first step), not at start.
absl::StatusOr<LoadedWorker> LoadWorker(const Args& a, int max_states, Metrics* m,
                                        bool deferred_cuda = false) {
  auto opts = ModelOptionsFromFlags(a.get("backend"), a.get("threads"), a.get("kv-type"));
  if (!opts.ok()) return opts.status();
  ModelOptions& o = *opts;
  WorkerInventory inv = HostInventory();  // before the model takes memory
  if (auto st = ApplyDevice(a, &o, &inv); !st.ok()) return st;
  o.cuda_deferred = deferred_cuda;
  o.cuda_state_slots = max_states;  // the GPU keeps this many sequence states from load on
  auto file = OpenModelFile(a.get("model"), a.get("synthetic"));
  if (!file.ok()) return file.status();
  if (!a.has("no-prefault") && a.get("synthetic").empty()) Prefault(**file, m);
  auto model = Model::Load(*file, o);
  if (!model.ok()) return model.status();
  Log("model: %s; backend %s%s, %d threads, KV %s", (*model)->config().summary().c_str(),
      BackendName(o.backend), o.backend == Backend::kCuda ? absl::StrCat(" on ", inv.device).c_str() : "",
      (*model)->n_threads(), type_name((*model)->kv_type()));
  if (o.backend == Backend::kCuda && deferred_cuda)
    Log("the GPU copy is made when the coordinator assigns this worker its layers (in a group: "
        "only their mixers) or at the first step");
  LoadedWorker w;
  w.file = *file;
  w.threads = (*model)->n_threads();
  w.service = std::make_unique<WorkerServiceImpl>(*file, std::move(*model), max_states, inv.device);
  w.service->set_inventory(inv);
  return w;
}

bool EngineOptionsFrom(const Args& a, EngineOptions* o, double* step_timeout) {
  int64_t v;
  if (!ParseInt(a, "max-running", 1, &v)) return false;
  o->max_running = static_cast<int>(v);
  if (!ParseInt(a, "max-waiting", 0, &v)) return false;
  o->max_waiting = static_cast<int>(v);
  if (!ParseInt(a, "max-kept", 0, &v)) return false;
  o->max_kept = static_cast<int>(v);
  if (!ParseInt(a, "step-tokens", 1, &v)) return false;
  o->step_token_budget = static_cast<int>(v);
  if (!ParseInt(a, "prefill-chunk", 1, &v)) return false;
  o->prefill_chunk = static_cast<int>(v);
  if (!ParseInt(a, "context", 0, &v)) return false;
  o->max_context = v;
  if (!ParseInt(a, "default-max-tokens", 1, &v)) return false;
  o->default_max_tokens = static_cast<int>(v);
  o->layer_split = a.get("layers");
  if (a.get("placement") != "plan" && a.get("placement") != "even") {
    a.usage_error("--placement must be plan or even, got '" + a.get("placement") + "'");
    return false;
  }
  o->use_planner = a.get("placement") == "plan";
  if (!ParseInt(a, "collective-timeout-ms", 100, &v)) return false;
  o->collective_timeout_ms = static_cast<int>(v);
  o->data_plane = a.get("data-plane");
  if (o->data_plane != "auto" && o->data_plane != "nccl" && o->data_plane != "host") {
    a.usage_error("--data-plane must be auto, nccl or host, got '" + o->data_plane + "'");
    return false;
  }
  if (!absl::SimpleAtod(a.get("step-timeout"), step_timeout) || *step_timeout <= 0) {
    a.usage_error("--step-timeout must be a positive number of seconds");
    return false;
  }
  return true;
}

std::string HostOf(const std::string& listen) {
  auto p = listen.rfind(':');
  return p == std::string::npos ? listen : listen.substr(0, p);
}

// Runs the public server until SIGINT/SIGTERM. `make_workers` builds the worker links.
// With `registry` (coordinator --expect-workers), workers register through the Rendezvous
// service, and a slot that changes hands makes the engine re-form the group.
int RunCoordinator(const Args& a, const std::string& listen,
                   const std::function<absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>>(Metrics*)>& make_workers,
                   const std::string& model_label, WorkerRegistry* registry = nullptr) {
  EngineOptions eo;
  double step_timeout = 30;
  if (!EngineOptionsFrom(a, &eo, &step_timeout)) return 2;
  int64_t metrics_port = 0;
  if (!absl::SimpleAtoi(a.get("metrics-port"), &metrics_port)) return a.usage_error("--metrics-port must be an integer");
  Metrics metrics(model_label);
  if (metrics_port >= 0) {
    const int port = metrics.Serve(HostOf(listen) + ":" + std::to_string(metrics_port));
    Log("metrics on http://%s:%d/metrics", HostOf(listen).c_str(), port);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // The public server starts first: health says NOT_SERVING and calls get UNAVAILABLE until the
  // workers have loaded the model and the engine is warmed up.
  InferenceServiceImpl service;
  RendezvousServiceImpl rendezvous;
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(&service);
  builder.RegisterService(&rendezvous);
  rendezvous.set_registry(registry);
  std::atomic<Engine*> live_engine{nullptr};
  std::atomic<bool> rebind_while_loading{false};
  if (registry)
    registry->set_on_rebind([&](int slot, const std::string& address) {
      const std::string why = absl::StrCat("worker slot ", slot, " was taken over by ", address);
      if (Engine* e = live_engine.load()) e->RequestRegroup(why, slot);
      else rebind_while_loading = true;
    });
  auto server = builder.BuildAndStart();
  if (!server || bound == 0) {
    Log("error: cannot listen on %s", listen.c_str());
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus("", false);
  server->GetHealthCheckService()->SetServingStatus("rigserve.v1.Inference", false);
  Log("listening on %s:%d (health NOT_SERVING while loading)", HostOf(listen).c_str(), bound);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto unhook = [&] {
    if (registry) registry->set_on_rebind(nullptr);
  };
  eo.coordinator_address = HostOf(listen) + ":" + std::to_string(bound);
  eo.bind_address = HostOf(listen);
  eo.drop_rendezvous_prefix = [&rendezvous](const std::string& p) { rendezvous.DropPrefix(p); };
  std::unique_ptr<Engine> engine;
  int failed_with_all_alive = 0;
  while (!engine) {
    auto workers = make_workers(&metrics);
    if (!workers.ok()) {
      Log("error: %s", std::string(workers.status().message()).c_str());
      unhook();
      return 1;
    }
    rebind_while_loading = false;
    auto e = Engine::Create(std::move(*workers), eo, &metrics);
    if (e.ok()) {
      engine = std::move(*e);
      break;
    }
    // Registered workers: one that died while the group formed comes back (it registers
    // again); anything else (a refused plan, a bad model, a group that fails three times while
    // every worker answers) is final.
    if (!registry || !absl::IsUnavailable(e.status()) || g_stop ||
        (registry->AllAlive() && ++failed_with_all_alive >= 3)) {
      Log("error: %s", std::string(e.status().message()).c_str());
      unhook();
      return 1;
    }
    Log("the workers did not form a group (%s); retrying in 1 s", std::string(e.status().message()).c_str());
    for (int i = 0; i < 10 && !g_stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  live_engine = engine.get();
  if (rebind_while_loading.exchange(false)) engine->RequestRegroup("a worker slot changed hands while loading");
  service.set_engine(engine.get());
  server->GetHealthCheckService()->SetServingStatus("", true);
  server->GetHealthCheckService()->SetServingStatus("rigserve.v1.Inference", true);
  Log("serving %s on %s (health SERVING)", engine->model().summary().c_str(),
      (HostOf(listen) + ":" + std::to_string(bound)).c_str());
  bool serving = true;
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (engine->healthy() != serving) {  // a worker went down or came back
      serving = engine->healthy();
      server->GetHealthCheckService()->SetServingStatus("", serving);
      server->GetHealthCheckService()->SetServingStatus("rigserve.v1.Inference", serving);
      Log("health %s", serving ? "SERVING" : "NOT_SERVING (a worker is down)");
    }
  }
  Log("shutting down");
  unhook();
  live_engine = nullptr;
  service.set_engine(nullptr);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace

namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// Starts `n` worker processes of this binary on loopback; they die with this process.
absl::StatusOr<std::vector<std::string>> SpawnLocalWorkers(const Args& a, int n, int max_states) {
  std::vector<std::string> addrs;
  // --device: one for every worker, or a comma list (worker i takes entry i, the list repeated
  // when shorter); with --backend cuda and no --device, worker i takes GPU i mod the GPU count,
  // so that N workers on an N-GPU host get one GPU each (and their activations NCCL).
  std::vector<std::string> devices = absl::StrSplit(a.get("device"), ',', absl::SkipEmpty());
#ifdef RIGSERVE_HAVE_CUDA
  if (devices.empty() && a.get("backend") == "cuda")
    for (int g = 0; g < cuda::device_count(); ++g) devices.push_back(absl::StrCat("cuda:", g));
#endif
  for (int i = 0; i < n; ++i) {
    const int port = FreePort();
    if (port <= 0) return absl::UnavailableError("no free port for a local worker");
    const std::string addr = "127.0.0.1:" + std::to_string(port);
    std::vector<std::string> args = {"/proc/self/exe", "worker", "--listen", addr,
                                     "--max-states", std::to_string(max_states),
                                     "--backend", a.get("backend"), "--threads", a.get("threads")};
    for (const char* opt : {"model", "synthetic", "kv-type"})
      if (a.has(opt)) {
        args.push_back(std::string("--") + opt);
        args.push_back(a.get(opt));
      }
    if (!devices.empty()) {
      args.push_back("--device");
      args.push_back(devices[i % devices.size()]);
    }
    if (a.has("no-prefault")) args.push_back("--no-prefault");
    const pid_t pid = fork();
    if (pid < 0) return absl::InternalError("fork failed");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      std::vector<char*> argv;
      for (auto& s : args) argv.push_back(s.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    Log("started local worker %d (pid %d) on %s", i, static_cast<int>(pid), addr.c_str());
    addrs.push_back(addr);
  }
  return addrs;
}

}  // namespace

int serve_main(int argc, char** argv) {
  Args a("serve", "Run the daemon: a coordinator and one in-process worker (one GPU or the CPU),\n"
                  "or --local-workers N worker processes on loopback (pipeline + expert parallel).");
  AddWorkerOptions(a);
  AddEngineOptions(a);
  a.opt("listen", "gRPC address", "127.0.0.1:50051")
      .opt("local-workers", "spawn this many worker processes on loopback instead of one in-process worker", "0")
      .opt("debug-load-delay-ms", "testing only: wait this long before loading the model, so "
           "clients can observe health NOT_SERVING (tests/daemon_test.cc)", "0");
  if (!a.parse(argc, argv)) return parse_exit(a);
  int64_t load_delay_ms = 0;
  if (!ParseInt(a, "debug-load-delay-ms", 0, &load_delay_ms)) return 2;
  int64_t local_workers = 0;
  if (!ParseInt(a, "local-workers", 0, &local_workers)) return 2;
  if (local_workers > 0) {
    int64_t running = 16, kept = 8;
    absl::SimpleAtoi(a.get("max-running"), &running);
    absl::SimpleAtoi(a.get("max-kept"), &kept);
    double step_timeout = 30;
    absl::SimpleAtod(a.get("step-timeout"), &step_timeout);
    auto addrs = SpawnLocalWorkers(a, static_cast<int>(local_workers), static_cast<int>(running + kept + 1));
    if (!addrs.ok()) {
      Log("error: %s", std::string(addrs.status().message()).c_str());
      return 1;
    }
    auto make = [&](Metrics*) -> absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>> {
      std::vector<std::unique_ptr<WorkerLink>> v;
      for (const auto& addr : *addrs) v.push_back(MakeRemoteLink(addr, step_timeout));
      for (auto& l : v)
        for (int i = 0; !l->Alive(); ++i) {
          if (g_stop) return absl::CancelledError("interrupted");
          if (i > 2400) return absl::UnavailableError("local worker " + l->name() + " did not start");
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      return v;
    };
    const std::string label = a.get("model").empty() ? a.get("synthetic") : a.get("model");
    return RunCoordinator(a, a.get("listen"), make, label);
  }
  LoadedWorker w;
  auto make = [&](Metrics* m) -> absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>> {
    for (int64_t t = 0; t < load_delay_ms && !g_stop; t += 10)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    int64_t running = 16, kept = 8;
    absl::SimpleAtoi(a.get("max-running"), &running);
    absl::SimpleAtoi(a.get("max-kept"), &kept);
    auto lw = LoadWorker(a, static_cast<int>(running + kept + 1), m);
    if (!lw.ok()) return lw.status();
    w = std::move(*lw);
    std::vector<std::unique_ptr<WorkerLink>> v;
    v.push_back(MakeLocalLink(w.service.get()));
    return v;
  };
  const std::string label = a.get("model").empty() ? a.get("synthetic") : a.get("model");
  return RunCoordinator(a, a.get("listen"), make, label);
}

int coordinator_main(int argc, char** argv) {
  Args a("coordinator",
         "Run the coordinator: the public API, driving workers over gRPC. Either it dials a list of\n"
         "workers (--workers, pipeline order = list order), or it waits for --expect-workers N\n"
         "workers started by hand with `rigserve worker --coordinator THIS_HOST:PORT` to register\n"
         "(pipeline order = their --rank, else registration order). Either way it plans the\n"
         "placement from the model's tensor table and each worker's memory (see --placement), logs\n"
         "the plan, and refuses to start when the model does not fit. A registered worker that dies\n"
         "and registers again (same command, same or new address) takes its slot back; the group\n"
         "re-forms and serving resumes.");
  AddEngineOptions(a);
  a.opt("listen", "gRPC address (public API, and where workers register)", "127.0.0.1:50051")
      .opt("workers", "comma-separated worker addresses HOST:PORT (pipeline order)")
      .opt("expect-workers", "wait for this many workers to register (instead of --workers)", "0");
  if (!a.parse(argc, argv)) return parse_exit(a);
  int64_t expect = 0;
  if (!ParseInt(a, "expect-workers", 0, &expect)) return 2;
  if (a.get("workers").empty() == (expect == 0))
    return a.usage_error("give exactly one of --workers HOST:PORT,... and --expect-workers N");
  double step_timeout = 30;
  absl::SimpleAtod(a.get("step-timeout"), &step_timeout);
  if (expect > 0) {
    WorkerRegistry registry(static_cast<int>(expect), step_timeout);
    auto make = [&](Metrics*) -> absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>> {
      if (registry.registered() < expect)
        Log("waiting for %d workers to register (rigserve worker --coordinator %s --model ...)",
            static_cast<int>(expect), a.get("listen").c_str());
      auto slots = registry.WaitForAll(g_stop);
      if (!slots.ok()) return slots.status();
      std::vector<std::unique_ptr<WorkerLink>> v;
      for (auto& s : *slots) v.push_back(MakeSlotLink(s));
      return v;
    };
    return RunCoordinator(a, a.get("listen"), make, "coordinator", &registry);
  }
  auto make = [&](Metrics*) -> absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>> {
    std::vector<std::unique_ptr<WorkerLink>> v;
    for (absl::string_view addr : absl::StrSplit(a.get("workers"), ',', absl::SkipEmpty()))
      v.push_back(MakeRemoteLink(std::string(addr), step_timeout));
    // Wait for the workers to come up (they may still be loading).
    for (auto& l : v) {
      for (int i = 0; !l->Alive(); ++i) {
        if (i % 20 == 0) Log("waiting for worker %s", l->name().c_str());
        if (g_stop) return absl::CancelledError("interrupted");
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    }
    return v;
  };
  return RunCoordinator(a, a.get("listen"), make, "coordinator");
}

namespace {

// "HOST:PORT" -> host (brackets of an IPv6 address removed) and port.
bool SplitHostPort(const std::string& addr, std::string* host, std::string* port) {
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon + 1 >= addr.size()) return false;
  *host = addr.substr(0, colon);
  *port = addr.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return !host->empty();
}

std::string JoinHostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

// The IP of the local interface that reaches `coordinator` (HOST:PORT): a UDP socket
// connected there (nothing is sent) reports the source address the routing table picks.
absl::StatusOr<std::string> LocalAddressToward(const std::string& coordinator) {
  std::string host, port;
  if (!SplitHostPort(coordinator, &host, &port))
    return absl::InvalidArgumentError(absl::StrCat("--coordinator must be HOST:PORT, got '", coordinator, "'"));
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return absl::UnavailableError(absl::StrCat("--coordinator ", coordinator, ": cannot resolve '", host,
                                               "': ", gai_strerror(rc)));
  std::string ip;
  std::string err = "no address";
  for (addrinfo* ai = res; ai && ip.empty(); ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, SOCK_DGRAM, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[INET6_ADDRSTRLEN] = {};
      const void* src = local.ss_family == AF_INET6
                            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                            : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
      if (inet_ntop(local.ss_family, src, buf, sizeof(buf))) ip = buf;
    } else {
      err = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(res);
  if (ip.empty())
    return absl::UnavailableError(absl::StrCat("--coordinator ", coordinator, ": no route to it (", err, ")"));
  return ip;
}

// Registers with the coordinator until it answers, then repeats the registration every 2 s as
// a heartbeat (a restarted coordinator learns the worker again). Logs each change.
void RegisterLoop(const std::string& coordinator, const rigserve::v1::RegisterRequest& req) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  auto stub = rigserve::v1::Rendezvous::NewStub(
      grpc::CreateCustomChannel(coordinator, grpc::InsecureChannelCredentials(), args));
  double backoff = 0.2;
  int attempts = 0;
  std::string last;  // the last outcome logged
  Log("registering with the coordinator %s as %s", coordinator.c_str(), req.address().c_str());
  while (!g_stop) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    rigserve::v1::RegisterResponse resp;
    const grpc::Status st = stub->Register(&ctx, req, &resp);
    double wait_s = 2.0;
    if (st.ok()) {
      const std::string now = absl::StrCat("registered with the coordinator ", coordinator, ": ", resp.message());
      if (now != last) Log("%s", now.c_str());
      last = now;
      backoff = 0.2;
      attempts = 0;
    } else {
      ++attempts;
      const std::string now = absl::StrCat("the coordinator ", coordinator, " did not take the registration (",
                                           static_cast<int>(st.error_code()), ": ", st.error_message(), ")");
      if (now != last || attempts % 20 == 0)
        Log("%s; attempt %d, retrying in %.1f s (backoff up to 5 s)", now.c_str(), attempts, backoff);
      last = now;
      wait_s = backoff;
      backoff = std::min(backoff * 2, 5.0);
    }
    for (double t = 0; t < wait_s && !g_stop; t += 0.05) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

int worker_main(int argc, char** argv) {
  Args a("worker",
         "Run a worker: owns a GGUF model and executes the coordinator's steps. With --coordinator\n"
         "it registers itself with `rigserve coordinator --expect-workers N` (address, device,\n"
         "memory), retrying with backoff until the coordinator answers; without it, it waits to be\n"
         "dialed (`rigserve coordinator --workers`).");
  AddWorkerOptions(a);
  a.opt("listen", "gRPC address of the Worker service (default 127.0.0.1:50061; with --coordinator "
        "an ephemeral port on the interface that reaches the coordinator)")
      .opt("coordinator", "HOST:PORT of the coordinator to register with (rigserve coordinator --expect-workers)")
      .opt("rank", "with --coordinator: the position in the pipeline to ask for (0..N-1; default: "
           "registration order)")
      .opt("max-states", "sequence states (running + kept) this worker holds", "32")
      .opt("metrics-port", "Prometheus /metrics port of this worker on its listen host (0 = any free "
           "port, logged; -1 = off)", "0");
  if (!a.parse(argc, argv)) return parse_exit(a);
  int64_t metrics_port = 0;
  if (!absl::SimpleAtoi(a.get("metrics-port"), &metrics_port) || metrics_port < -1 ||
      metrics_port > 65535)
    return a.usage_error("--metrics-port must be -1 (off), 0 (any) or a port number");
  int64_t states = 0;
  if (!ParseInt(a, "max-states", 1, &states)) return 2;
  int64_t rank = -1;
  if (a.has("rank") && !ParseInt(a, "rank", 0, &rank)) return 2;
  if (a.has("rank") && !a.has("coordinator")) return a.usage_error("--rank needs --coordinator");
  const std::string coordinator = a.get("coordinator");
  std::string listen = a.get("listen");
  std::string local_ip;
  if (!coordinator.empty()) {
    auto ip = LocalAddressToward(coordinator);
    if (!ip.ok()) {
      Log("error: %s", std::string(ip.status().message()).c_str());
      return 1;
    }
    local_ip = *ip;
    if (listen.empty()) listen = JoinHostPort(local_ip, 0);
  } else if (listen.empty()) {
    listen = "127.0.0.1:50061";
  }
  auto w = LoadWorker(a, static_cast<int>(states), nullptr, /*deferred_cuda=*/true);
  if (!w.ok()) {
    Log("error: %s", std::string(w.status().message()).c_str());
    return 1;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxSendMessageSize(512 << 20);
  builder.RegisterService(w->service.get());
  auto server = builder.BuildAndStart();
  if (!server || bound == 0) {
    Log("error: cannot listen on %s", listen.c_str());
    return 1;
  }
  Log("worker listening on %s:%d", HostOf(listen).c_str(), bound);
  std::unique_ptr<WorkerMetrics> wm;
  if (metrics_port >= 0) {
    const std::string dev = w->service->inventory().device.empty() ? "cpu" : w->service->inventory().device;
    wm = std::make_unique<WorkerMetrics>(
        dev, a.get("model").empty() ? "synthetic " + a.get("synthetic") : a.get("model"));
    std::string host = HostOf(listen);
    if (host.empty()) host = "0.0.0.0";
    int mport = -1;
    try {
      mport = wm->Serve(JoinHostPort(host, static_cast<int>(metrics_port)));
    } catch (const std::exception& e) {
      Log("error: worker metrics on %s port %lld: %s", host.c_str(),
          static_cast<long long>(metrics_port), e.what());
      return 1;
    }
    Log("worker metrics on http://%s:%d/metrics", host.c_str(), mport);
    WorkerMetrics* raw = wm.get();
    w->service->set_step_observer([raw](const WorkerStepStats& st) { raw->Observe(st); });
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::thread registration;
  if (!coordinator.empty()) {
    std::string host, port;
    SplitHostPort(listen, &host, &port);
    if (host == "0.0.0.0" || host == "::" || host.empty()) host = local_ip;  // listening everywhere
    const WorkerInventory& inv = w->service->inventory();
    rigserve::v1::RegisterRequest req;
    req.set_address(JoinHostPort(host, bound));
    req.set_device(inv.device);
    req.set_device_name(inv.device_name);
    req.set_device_memory_free(inv.device_free);
    req.set_device_memory_total(inv.device_total);
    req.set_host_memory_total(inv.host_total);
    req.set_host_memory_available(inv.host_available);
    req.set_host_id(inv.host_id);
    if (rank >= 0) req.set_rank(static_cast<int32_t>(rank));
    req.set_model(a.get("model").empty() ? "synthetic " + a.get("synthetic") : a.get("model"));
    req.set_instance(std::random_device{}() * 4294967296ull + std::random_device{}());
    req.set_threads(w->threads);
    registration = std::thread([coordinator, req] { RegisterLoop(coordinator, req); });
  }
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (registration.joinable()) registration.join();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

}  // namespace rs::cli
