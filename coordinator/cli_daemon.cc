// rigserve serve / coordinator / worker.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "coordinator/daemon.h"
#include "coordinator/engine.h"
#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"
#include "coordinator/rendezvous_service.h"
#include "coordinator/worker_link.h"
#include "worker/args.h"
#include "worker/model.h"
#include "worker/model_loader.h"
#include "worker/service/worker_service.h"

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
      .opt("layers", "layers per worker with several workers, e.g. 0-15,16-31,32-47 (default: even split)")
      .opt("collective-timeout-ms", "timeout of the workers' collectives", "10000");
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

struct LoadedWorker {
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<WorkerServiceImpl> service;
};

absl::StatusOr<LoadedWorker> LoadWorker(const Args& a, int max_states, Metrics* m) {
  auto file = OpenModelFile(a.get("model"), a.get("synthetic"));
  if (!file.ok()) return file.status();
  auto opts = ModelOptionsFromFlags(a.get("backend"), a.get("threads"), a.get("kv-type"));
  if (!opts.ok()) return opts.status();
  const ModelOptions& o = *opts;
  if (!a.has("no-prefault") && a.get("synthetic").empty()) Prefault(**file, m);
  auto model = Model::Load(*file, o);
  if (!model.ok()) return model.status();
  Log("model: %s; backend %s, %d threads, KV %s", (*model)->config().summary().c_str(),
      BackendName(o.backend), (*model)->n_threads(), type_name((*model)->kv_type()));
  LoadedWorker w;
  w.file = *file;
  w.service = std::make_unique<WorkerServiceImpl>(*file, std::move(*model), max_states,
                                                  o.backend == Backend::kCuda ? "cuda:0" : "cpu");
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
  if (!ParseInt(a, "collective-timeout-ms", 100, &v)) return false;
  o->collective_timeout_ms = static_cast<int>(v);
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
int RunCoordinator(const Args& a, const std::string& listen,
                   const std::function<absl::StatusOr<std::vector<std::unique_ptr<WorkerLink>>>(Metrics*)>& make_workers,
                   const std::string& model_label) {
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
  auto workers = make_workers(&metrics);
  if (!workers.ok()) {
    Log("error: %s", std::string(workers.status().message()).c_str());
    return 1;
  }
  eo.coordinator_address = HostOf(listen) + ":" + std::to_string(bound);
  eo.bind_address = HostOf(listen);
  eo.drop_rendezvous_prefix = [&rendezvous](const std::string& p) { rendezvous.DropPrefix(p); };
  auto e = Engine::Create(std::move(*workers), eo, &metrics);
  if (!e.ok()) {
    Log("error: %s", std::string(e.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<Engine> engine = std::move(*e);
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
  Args a("coordinator", "Run the coordinator: the public API, driving workers over gRPC.");
  AddEngineOptions(a);
  a.opt("listen", "gRPC address", "127.0.0.1:50051")
      .opt("workers", "comma-separated worker addresses HOST:PORT (pipeline order)");
  if (!a.parse(argc, argv)) return parse_exit(a);
  if (a.get("workers").empty()) return a.usage_error("--workers is required");
  double step_timeout = 30;
  absl::SimpleAtod(a.get("step-timeout"), &step_timeout);
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

int worker_main(int argc, char** argv) {
  Args a("worker", "Run a worker: owns a GGUF model and executes the coordinator's steps.");
  AddWorkerOptions(a);
  a.opt("listen", "gRPC address of the Worker service", "127.0.0.1:50061")
      .opt("max-states", "sequence states (running + kept) this worker holds", "32");
  if (!a.parse(argc, argv)) return parse_exit(a);
  int64_t states = 0;
  if (!ParseInt(a, "max-states", 1, &states)) return 2;
  auto w = LoadWorker(a, static_cast<int>(states), nullptr);
  if (!w.ok()) {
    Log("error: %s", std::string(w.status().message()).c_str());
    return 1;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(a.get("listen"), grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxSendMessageSize(512 << 20);
  builder.RegisterService(w->service.get());
  auto server = builder.BuildAndStart();
  if (!server || bound == 0) {
    Log("error: cannot listen on %s", a.get("listen").c_str());
    return 1;
  }
  Log("worker listening on %s:%d", HostOf(a.get("listen")).c_str(), bound);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

}  // namespace rs::cli
