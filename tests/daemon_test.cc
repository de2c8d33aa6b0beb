// Acceptance tests of the daemon (issue 5), over real gRPC on loopback. Every test starts
// `rigserve serve` as a subprocess (listen and metrics ports 0: the daemon picks free ports and
// logs them) on a tiny random qwen35moe model made once per test process with
// `rigserve make-model`, talks to it through the generated rigserve.v1 / grpc.health.v1 stubs,
// the `rigserve client` CLI and plain HTTP for /metrics, and kills it in teardown.
//
// What is covered: greedy Generate == offline `rigserve generate` (alone and beside 16 other
// streams); Chat with thinking on/off, the thinking budget, tool calls (a call forced through
// logit_bias + repetition_penalty, see ForcedToolCall), a second turn that resumes the first
// turn's kept state with the same output as a cold server; Abort / client disconnect free the
// slot (ServerInfo and /metrics); a full server queues; invalid requests are INVALID_ARGUMENT
// naming the field; health NOT_SERVING while loading then SERVING; /metrics parsed by a strict
// Prometheus text-format parser (below, with its own tests) and checked against the traffic.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "coordinator/rendezvous_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "rigserve/v1/inference.grpc.pb.h"

namespace rs {
namespace {

namespace pb = rigserve::v1;
namespace hp = grpc::health::v1;
using Clock = std::chrono::steady_clock;

const std::string kBinary = RS_BINARY_DIR "/rigserve";

double Now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

std::vector<int32_t> ParseIds(const std::string& line) {
  std::vector<int32_t> v;
  std::istringstream in(line);
  int32_t x;
  while (in >> x) v.push_back(x);
  return v;
}

// ---- processes ---------------------------------------------------------------------------------

// A scratch directory for this test process; removed at exit.
const std::string& ScratchDir() {
  static const std::string* dir = [] {
    char t[] = "/tmp/rs_daemon_test_XXXXXX";
    const char* d = mkdtemp(t);
    auto* s = new std::string(d ? d : "/tmp");
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(*dir, ec); });
    return s;
  }();
  return *dir;
}

std::string ScratchFile(const std::string& stem) {
  static std::atomic<int> n{0};
  return ScratchDir() + "/" + stem + "." + std::to_string(n++);
}

// Forks and execs argv with stdout/stderr (and optionally stdin) redirected to files. The child
// dies with this process (PR_SET_PDEATHSIG), so a crashed test leaves no daemon behind.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& out_path,
            const std::string& err_path, const std::string& in_path = "") {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: async-signal-safe calls only.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  int in = open(in_path.empty() ? "/dev/null" : in_path.c_str(), O_RDONLY);
  int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0 || err < 0) _exit(127);
  dup2(in, 0);
  dup2(out, 1);
  dup2(err, 2);
  execv(args[0], args.data());
  _exit(127);
}

struct CmdResult {
  int code = -1;
  std::string out, err;
};

// Runs a command to completion (at most `timeout_s`).
CmdResult RunCmd(const std::vector<std::string>& argv, const std::string& stdin_text = "",
                 double timeout_s = 50) {
  const std::string out = ScratchFile("out"), err = ScratchFile("err");
  std::string in;
  if (!stdin_text.empty()) {
    in = ScratchFile("in");
    std::ofstream(in, std::ios::binary) << stdin_text;
  }
  const pid_t pid = Spawn(argv, out, err, in);
  CmdResult r;
  const double end = Now() + timeout_s;
  int status = 0;
  while (true) {
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (Now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.err = "timed out\n";
      break;
    }
    SleepMs(5);
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadFile(out);
  r.err += ReadFile(err);
  return r;
}

// The tiny random MoE model at `quant`, made once per test process (the callers' statics).
std::string MakeTinyModel(const std::string& quant, const std::string& file) {
  const std::string p = ScratchDir() + "/" + file;
  CmdResult r = RunCmd({kBinary, "make-model", "--arch", "qwen35moe", "--preset", "tiny",
                        "--quant", quant, "--out", p, "--quiet"});
  if (r.code != 0) {
    std::fprintf(stderr, "make-model failed (%d): %s\n", r.code, r.err.c_str());
    std::abort();
  }
  return p;
}

const std::string& TinyModel() {
  static const std::string path = MakeTinyModel("Q8_0", "tiny-q8_0.gguf");
  return path;
}

// The same tiny MoE with F32 weights. Where a test compares two ways of computing one sequence
// (a kept state resumed vs a cold prefill), the prefill is split differently and the chunked
// delta rule rounds differently from the recurrence (~1e-7 relative); the Q8_0 model's q8
// activation rounding turns such differences into other greedy ids, F32 weights keep them small.
const std::string& TinyModelF32() {
  static const std::string path = MakeTinyModel("F32", "tiny-f32.gguf");
  return path;
}

// Offline greedy generation: `rigserve generate` (no EOG stop, exactly max_tokens ids).
std::vector<int32_t> OfflineGenerate(const std::vector<int32_t>& prompt, int max_tokens,
                                     const std::string& model = TinyModel()) {
  CmdResult r = RunCmd({kBinary, "generate", "--model", model, "--threads", "1",
                        "--prompt-ids", Join(prompt), "--max-tokens", std::to_string(max_tokens)});
  EXPECT_EQ(r.code, 0) << r.err;
  return ParseIds(r.out.substr(0, r.out.find('\n')));
}

std::unique_ptr<hp::Health::Stub> HealthStub(const std::string& addr) {
  return hp::Health::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
}

// A `rigserve serve` subprocess on the tiny model.
class Daemon {
 public:
  // Starts the daemon; waits for its ports in the log and (wait_serving) for health SERVING.
  // Returns nullptr with *error set when it does not come up.
  static std::unique_ptr<Daemon> Start(std::vector<std::string> extra, std::string* error,
                                       bool wait_serving = true,
                                       const std::string& model = TinyModel()) {
    std::unique_ptr<Daemon> d(new Daemon());
    d->log_ = ScratchFile("serve.log");
    std::vector<std::string> argv = {kBinary, "serve", "--model", model,
                                     "--listen", "127.0.0.1:0", "--metrics-port", "0",
                                     "--threads", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    d->pid_ = Spawn(argv, ScratchFile("serve.out"), d->log_);
    static const std::regex listen_re("listening on 127\\.0\\.0\\.1:([0-9]+)");
    static const std::regex metrics_re("metrics on http://127\\.0\\.0\\.1:([0-9]+)/metrics");
    const double end = Now() + 40;
    while (true) {
      const std::string log = ReadFile(d->log_);
      std::smatch m;
      if (d->metrics_port_ == 0 && std::regex_search(log, m, metrics_re)) d->metrics_port_ = std::stoi(m[1]);
      if (d->port_ == 0 && std::regex_search(log, m, listen_re)) d->port_ = std::stoi(m[1]);
      if (d->port_ && d->metrics_port_) break;
      int status;
      if (waitpid(d->pid_, &status, WNOHANG) == d->pid_) {
        d->pid_ = -1;
        *error = "rigserve serve exited early:\n" + log;
        return nullptr;
      }
      if (Now() > end) {
        *error = "rigserve serve did not report its ports:\n" + log;
        return nullptr;
      }
      SleepMs(10);
    }
    d->addr_ = "127.0.0.1:" + std::to_string(d->port_);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    d->channel_ = grpc::CreateCustomChannel(d->addr_, grpc::InsecureChannelCredentials(), args);
    d->stub_ = pb::Inference::NewStub(d->channel_);
    d->health_ = hp::Health::NewStub(d->channel_);
    if (wait_serving && !d->WaitServing(40)) {
      *error = "rigserve serve never became SERVING:\n" + d->Log();
      return nullptr;
    }
    return d;
  }

  ~Daemon() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status;
    for (int i = 0; i < 500; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) return;
      SleepMs(10);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
  }

  // The health status of `service`, or nullopt when the call fails.
  std::optional<hp::HealthCheckResponse::ServingStatus> Health(const std::string& service = "",
                                                               grpc::Status* st = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    hp::HealthCheckRequest req;
    req.set_service(service);
    hp::HealthCheckResponse resp;
    grpc::Status s = health_->Check(&ctx, req, &resp);
    if (st) *st = s;
    if (!s.ok()) return std::nullopt;
    return resp.status();
  }

  bool WaitServing(double timeout_s) {
    const double end = Now() + timeout_s;
    while (Now() < end) {
      if (Health() == hp::HealthCheckResponse::SERVING) return true;
      if (!alive()) return false;
      SleepMs(20);
    }
    return false;
  }

  bool alive() {
    int status;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }

  pb::ServerInfoResponse ServerInfo() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pb::ServerInfoResponse r;
    grpc::Status st = stub_->ServerInfo(&ctx, pb::ServerInfoRequest(), &r);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return r;
  }

  // Polls until pred(ServerInfo) holds; false after timeout_s.
  bool WaitInfo(const std::function<bool(const pb::ServerInfoResponse&)>& pred, double timeout_s = 10) {
    const double end = Now() + timeout_s;
    while (Now() < end) {
      if (pred(ServerInfo())) return true;
      SleepMs(20);
    }
    return false;
  }

  std::string Log() const { return ReadFile(log_); }
  const std::string& addr() const { return addr_; }
  int metrics_port() const { return metrics_port_; }
  pb::Inference::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

 private:
  Daemon() = default;
  pid_t pid_ = -1;
  int port_ = 0, metrics_port_ = 0;
  std::string log_, addr_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Inference::Stub> stub_;
  std::unique_ptr<hp::Health::Stub> health_;
};

#define START_DAEMON(var, ...)                                         \
  std::string var##_error;                                             \
  auto var = Daemon::Start(__VA_ARGS__, &var##_error);                 \
  ASSERT_NE(var, nullptr) << var##_error

// ---- calls -------------------------------------------------------------------------------------

struct GenOut {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  pb::GenerateResponse last;
  int messages = 0;
  double t_first = 0, t_end = 0;
};

// One Generate call, read to the end. `on_message` sees every message (after it is counted).
GenOut CallGenerate(pb::Inference::Stub& stub, const pb::GenerateRequest& req,
                    const std::function<void(const pb::GenerateResponse&)>& on_message = {},
                    grpc::ClientContext* ctx_in = nullptr, double timeout_s = 50) {
  grpc::ClientContext own;
  grpc::ClientContext* ctx = ctx_in ? ctx_in : &own;
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  GenOut o;
  auto reader = stub.Generate(ctx, req);
  pb::GenerateResponse m;
  while (reader->Read(&m)) {
    if (o.messages++ == 0) o.t_first = Now();
    o.ids.insert(o.ids.end(), m.token_ids().begin(), m.token_ids().end());
    o.text += m.text();
    o.last = m;
    if (on_message) on_message(m);
  }
  o.status = reader->Finish();
  o.t_end = Now();
  return o;
}

pb::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_tokens,
                                  bool ignore_eos = true) {
  pb::GenerateRequest r;
  for (int32_t t : prompt) r.mutable_token_ids()->add_ids(t);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  if (ignore_eos) r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

struct ChatOut {
  grpc::Status status;
  std::string reasoning, content, finish_reason;
  std::vector<pb::ToolCall> calls;
  std::vector<int32_t> ids;
  std::string kinds;  // one letter per delta message in order: r(easoning) c(ontent) t(ool call)
  bool parse_failed = false;
  pb::Usage usage;
};

ChatOut CallChat(pb::Inference::Stub& stub, const pb::ChatRequest& req, double timeout_s = 50) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  ChatOut o;
  auto reader = stub.Chat(&ctx, req);
  pb::ChatResponse m;
  while (reader->Read(&m)) {
    o.ids.insert(o.ids.end(), m.token_ids().begin(), m.token_ids().end());
    if (m.has_usage()) o.usage = m.usage();
    if (!m.finish_reason().empty()) o.finish_reason = m.finish_reason();
    if (m.tool_call_parse_failed()) o.parse_failed = true;
    switch (m.delta_case()) {
      case pb::ChatResponse::kReasoning: o.reasoning += m.reasoning(); o.kinds += 'r'; break;
      case pb::ChatResponse::kContent: o.content += m.content(); o.kinds += 'c'; break;
      case pb::ChatResponse::kToolCall: o.calls.push_back(m.tool_call()); o.kinds += 't'; break;
      default: break;
    }
  }
  o.status = reader->Finish();
  return o;
}

pb::ChatRequest UserChat(const std::string& text, int max_tokens, bool thinking) {
  pb::ChatRequest r;
  auto* m = r.add_messages();
  m->set_role("user");
  m->set_content(text);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  if (!thinking) r.set_chat_template_kwargs_json("{\"enable_thinking\": false}");
  return r;
}

std::vector<int32_t> Tokenize(Daemon& d, const std::string& text, bool special) {
  grpc::ClientContext ctx;
  pb::TokenizeRequest req;
  req.set_text(text);
  req.set_parse_special(special);
  pb::TokenizeResponse resp;
  grpc::Status st = d.stub().Tokenize(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {resp.ids().begin(), resp.ids().end()};
}

pb::ModelInfoResponse ModelInfo(Daemon& d) {
  grpc::ClientContext ctx;
  pb::ModelInfoResponse r;
  grpc::Status st = d.stub().ModelInfo(&ctx, pb::ModelInfoRequest(), &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return r;
}

// `ids` cut after the first end-of-generation id (inclusive): what a server that stops at EOG
// returns for the same greedy run.
std::vector<int32_t> CutAtEog(std::vector<int32_t> ids, const std::vector<int32_t>& eog) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (std::find(eog.begin(), eog.end(), ids[i]) != eog.end()) {
      ids.resize(i + 1);
      break;
    }
  return ids;
}

// ---- /metrics ----------------------------------------------------------------------------------

// GET http://127.0.0.1:port/path (HTTP/1.0); returns the body, or "" with *error set.
std::string HttpGet(int port, const std::string& path, std::string* error) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    *error = "connect to metrics port " + std::to_string(port) + ": " + std::strerror(errno);
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    *error = "write failed";
    close(fd);
    return "";
  }
  std::string resp;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t hdr_end = resp.find("\r\n\r\n");
  if (resp.compare(0, 12, "HTTP/1.1 200") != 0 && resp.compare(0, 12, "HTTP/1.0 200") != 0) {
    *error = "bad HTTP response: " + resp.substr(0, 200);
    return "";
  }
  if (hdr_end == std::string::npos) {
    *error = "no end of headers";
    return "";
  }
  std::string headers = resp.substr(0, hdr_end), body = resp.substr(hdr_end + 4);
  std::string lower = headers;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    std::string out;
    size_t p = 0;
    while (p < body.size()) {
      const size_t e = body.find("\r\n", p);
      if (e == std::string::npos) break;
      const size_t len = std::stoul(body.substr(p, e - p), nullptr, 16);
      if (len == 0) break;
      out += body.substr(e + 2, len);
      p = e + 2 + len + 2;
    }
    body = out;
  }
  return body;
}

// A strict parser of the Prometheus text exposition format (version 0.0.4):
//   # HELP <name> <docstring>        at most once per family, escapes \\ and \n only
//   # TYPE <name> <type>             at most once, before the family's first sample;
//                                    type counter|gauge|histogram|summary|untyped
//   <name>[{<label>="<value>",...}] <value> [<timestamp ms>]
// Metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* and do not
// start with "__"; label values escape only \\ \" \n; values are Go ParseFloat numbers (NaN,
// +Inf, -Inf in any case). Every sample belongs to a family declared by TYPE (histograms:
// _bucket/_sum/_count, summaries: the name itself with a quantile label, _sum, _count), a
// family's lines are contiguous, no series repeats, counters are >= 0, histogram buckets have
// an le label, ascending le ending at +Inf, non-decreasing counts, and +Inf == _count.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
struct PromFamily {
  std::string name, type, help;
  bool has_help = false;
  std::vector<PromSample> samples;
};
using PromFamilies = std::map<std::string, PromFamily>;

bool IsMetricName(const std::string& s) {
  static const std::regex re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  return std::regex_match(s, re);
}
bool IsLabelName(const std::string& s) {
  static const std::regex re("[a-zA-Z_][a-zA-Z0-9_]*");
  return std::regex_match(s, re) && s.rfind("__", 0) != 0;
}

bool ParsePromValue(const std::string& s, double* v) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), ::tolower);
  if (l == "nan") { *v = std::nan(""); return true; }
  if (l == "+inf" || l == "inf") { *v = INFINITY; return true; }
  if (l == "-inf") { *v = -INFINITY; return true; }
  static const std::regex num("[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?");
  if (!std::regex_match(s, num)) return false;
  *v = std::strtod(s.c_str(), nullptr);
  return true;
}

// Returns "" on success, else the first problem with its line number.
std::string ParsePrometheus(const std::string& text, PromFamilies* out) {
  PromFamilies fams;
  std::set<std::string> finished;  // families whose lines ended (must not reappear)
  std::string current;             // family of the previous line
  std::set<std::string> series;
  if (!text.empty() && text.back() != '\n') return "the exposition does not end with a newline";
  std::istringstream in(text);
  std::string line;
  int ln = 0;
  auto err = [&](const std::string& m) { return "line " + std::to_string(ln) + ": " + m + ": '" + line + "'"; };
  auto enter = [&](const std::string& fam) -> bool {
    if (fam == current) return true;
    if (finished.count(fam)) return false;
    if (!current.empty()) finished.insert(current);
    current = fam;
    return true;
  };
  while (std::getline(in, line)) {
    ++ln;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream ls(line);
      std::string hash, kw, name;
      ls >> hash >> kw;
      if (hash != "#") return err("a comment must start with '# '");
      if (kw != "HELP" && kw != "TYPE") continue;  // plain comment
      if (!(ls >> name) || !IsMetricName(name)) return err("bad metric name in " + kw);
      std::string rest;
      std::getline(ls, rest);
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      if (!enter(name)) return err("family " + name + " appears in two places");
      PromFamily& f = fams[name];
      f.name = name;
      if (kw == "HELP") {
        if (f.has_help) return err("second HELP for " + name);
        for (size_t i = 0; i < rest.size(); ++i)
          if (rest[i] == '\\' && (i + 1 >= rest.size() || (rest[i + 1] != '\\' && rest[i + 1] != 'n')))
            return err("bad escape in HELP");
          else if (rest[i] == '\\') ++i;
        f.help = rest;
        f.has_help = true;
      } else {
        if (!f.type.empty()) return err("second TYPE for " + name);
        if (!f.samples.empty()) return err("TYPE after samples of " + name);
        static const std::set<std::string> types = {"counter", "gauge", "histogram", "summary", "untyped"};
        if (!types.count(rest)) return err("unknown type '" + rest + "'");
        f.type = rest;
      }
      continue;
    }
    // A sample.
    size_t p = 0;
    while (p < line.size() && line[p] != '{' && line[p] != ' ') ++p;
    PromSample s;
    s.name = line.substr(0, p);
    if (!IsMetricName(s.name)) return err("bad metric name '" + s.name + "'");
    if (p < line.size() && line[p] == '{') {
      ++p;
      while (true) {
        if (p < line.size() && line[p] == '}') { ++p; break; }
        size_t q = p;
        while (q < line.size() && line[q] != '=') ++q;
        const std::string lname = line.substr(p, q - p);
        if (!IsLabelName(lname)) return err("bad label name '" + lname + "'");
        if (q + 1 >= line.size() || line[q + 1] != '"') return err("label value must be quoted");
        std::string val;
        size_t r = q + 2;
        bool closed = false;
        for (; r < line.size(); ++r) {
          if (line[r] == '\\') {
            if (r + 1 >= line.size()) return err("dangling escape");
            const char c = line[++r];
            if (c == '\\') val += '\\';
            else if (c == '"') val += '"';
            else if (c == 'n') val += '\n';
            else return err(std::string("bad escape \\") + c + " in a label value");
          } else if (line[r] == '"') {
            closed = true;
            break;
          } else {
            val += line[r];
          }
        }
        if (!closed) return err("unterminated label value");
        if (s.labels.count(lname)) return err("label " + lname + " given twice");
        s.labels[lname] = val;
        p = r + 1;
        if (p < line.size() && line[p] == ',') ++p;
        else if (p >= line.size() || line[p] != '}') return err("expected ',' or '}' after a label");
      }
    }
    if (p >= line.size() || line[p] != ' ') return err("expected a space before the value");
    while (p < line.size() && line[p] == ' ') ++p;
    const size_t ve = line.find(' ', p);
    const std::string vs = line.substr(p, ve == std::string::npos ? std::string::npos : ve - p);
    if (!ParsePromValue(vs, &s.value)) return err("bad value '" + vs + "'");
    if (ve != std::string::npos) {
      const std::string ts = line.substr(ve + 1);
      static const std::regex ts_re("-?[0-9]+");
      if (!std::regex_match(ts, ts_re)) return err("bad timestamp '" + ts + "'");
    }
    // Its family.
    std::string fam;
    auto declared = [&](const std::string& n, std::initializer_list<const char*> ok_types) {
      auto it = fams.find(n);
      if (it == fams.end()) return false;
      for (const char* t : ok_types) if (it->second.type == t) return true;
      return false;
    };
    auto strip = [&](const char* suf) -> std::string {
      const std::string sfx(suf);
      if (s.name.size() > sfx.size() && s.name.compare(s.name.size() - sfx.size(), sfx.size(), sfx) == 0)
        return s.name.substr(0, s.name.size() - sfx.size());
      return "";
    };
    if (std::string b = strip("_bucket"); !b.empty() && declared(b, {"histogram"})) fam = b;
    else if (std::string b2 = strip("_sum"); !b2.empty() && declared(b2, {"histogram", "summary"})) fam = b2;
    else if (std::string b3 = strip("_count"); !b3.empty() && declared(b3, {"histogram", "summary"})) fam = b3;
    else if (declared(s.name, {"counter", "gauge", "untyped", "summary"})) fam = s.name;
    else return err("sample of an undeclared family (no TYPE line)");
    if (!enter(fam)) return err("family " + fam + " appears in two places");
    PromFamily& f = fams[fam];
    const bool bucket = f.type == "histogram" && s.name == fam + "_bucket";
    if (bucket != (s.labels.count("le") > 0)) return err("le label on a non-bucket or missing on a bucket");
    if (f.type == "summary" && s.name == fam && !s.labels.count("quantile")) return err("summary sample without quantile");
    if (f.type == "counter" && !(s.value >= 0)) return err("counter value is negative or NaN");
    std::string key = s.name + "{";
    for (const auto& [k, v] : s.labels) key += k + "=\"" + v + "\",";
    if (!series.insert(key).second) return err("series given twice");
    f.samples.push_back(std::move(s));
  }
  // Histogram consistency.
  for (const auto& [name, f] : fams) {
    if (f.type.empty()) return "family " + name + " has HELP but no TYPE";
    if (f.type != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // labels sans le
    std::map<std::string, double> counts;
    std::set<std::string> sums;
    for (const auto& s : f.samples) {
      std::string key;
      for (const auto& [k, v] : s.labels) if (k != "le") key += k + "=" + v + ",";
      if (s.name == name + "_bucket") {
        double le;
        if (!ParsePromValue(s.labels.at("le"), &le)) return name + ": bad le '" + s.labels.at("le") + "'";
        buckets[key].push_back({le, s.value});
      } else if (s.name == name + "_count") {
        counts[key] = s.value;
      } else {
        sums.insert(key);
      }
    }
    for (const auto& [key, bs] : buckets) {
      for (size_t i = 1; i < bs.size(); ++i) {
        if (!(bs[i].first > bs[i - 1].first)) return name + "{" + key + "}: le not ascending";
        if (bs[i].second < bs[i - 1].second) return name + "{" + key + "}: bucket counts decrease";
      }
      if (bs.empty() || !std::isinf(bs.back().first)) return name + "{" + key + "}: no +Inf bucket";
      if (!counts.count(key) || counts[key] != bs.back().second)
        return name + "{" + key + "}: _count differs from the +Inf bucket";
      if (!sums.count(key)) return name + "{" + key + "}: no _sum";
    }
  }
  *out = std::move(fams);
  return "";
}

// The value of the one sample `name` (a counter/gauge, or a histogram's name_count) whose labels
// include `labels`; NaN if absent.
double PromValue(const PromFamilies& fams, const std::string& name,
                 const std::map<std::string, std::string>& labels = {}) {
  for (const auto& [fname, f] : fams)
    for (const auto& s : f.samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) match = false;
      }
      if (match) return s.value;
    }
  return std::nan("");
}

PromFamilies Scrape(Daemon& d) {
  std::string error;
  const std::string body = HttpGet(d.metrics_port(), "/metrics", &error);
  EXPECT_TRUE(error.empty()) << error;
  PromFamilies fams;
  const std::string perr = ParsePrometheus(body, &fams);
  EXPECT_EQ(perr, "") << body;
  return fams;
}

// Polls /metrics until pred holds.
bool WaitMetrics(Daemon& d, const std::function<bool(const PromFamilies&)>& pred, double timeout_s = 10) {
  const double end = Now() + timeout_s;
  while (Now() < end) {
    if (pred(Scrape(d))) return true;
    SleepMs(50);
  }
  return false;
}

// ---- the strict parser itself ------------------------------------------------------------------

TEST(PromParserTest, AcceptsAValidExposition) {
  const std::string ok =
      "# HELP a_total Things.\\n Escaped \\\\.\n"
      "# TYPE a_total counter\n"
      "a_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\n"
      "a_total{x=\"2\"} 4e3 1700000000000\n"
      "# a plain comment\n"
      "# TYPE ns:g gauge\n"
      "ns:g -1.5\n"
      "# TYPE h histogram\n"
      "h_bucket{le=\"0.1\"} 1\n"
      "h_bucket{le=\"1\"} 2\n"
      "h_bucket{le=\"+Inf\"} 3\n"
      "h_sum 2.5\n"
      "h_count 3\n"
      "# TYPE s summary\n"
      "s{quantile=\"0.5\"} NaN\n"
      "s_sum 0\n"
      "s_count 0\n";
  PromFamilies f;
  ASSERT_EQ(ParsePrometheus(ok, &f), "");
  EXPECT_EQ(f["a_total"].samples.size(), 2u);
  EXPECT_EQ(f["a_total"].samples[0].labels["y"], "q\"\\\n");
  EXPECT_EQ(PromValue(f, "a_total", {{"x", "2"}}), 4000);
  EXPECT_EQ(PromValue(f, "ns:g"), -1.5);
  EXPECT_EQ(PromValue(f, "h_count"), 3);
}

TEST(PromParserTest, RejectsMalformedExpositions) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"no TYPE", "x 1\n"},
      {"bad name", "# TYPE 1x gauge\n1x 1\n"},
      {"bad type", "# TYPE x gauges\nx 1\n"},
      {"two TYPEs", "# TYPE x gauge\n# TYPE x gauge\nx 1\n"},
      {"TYPE after sample", "# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\n# TYPE x gauge\n"},
      {"unquoted label", "# TYPE x gauge\nx{a=1} 1\n"},
      {"bad label escape", "# TYPE x gauge\nx{a=\"\\t\"} 1\n"},
      {"reserved label", "# TYPE x gauge\nx{__a=\"1\"} 1\n"},
      {"duplicate label", "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n"},
      {"bad value", "# TYPE x gauge\nx one\n"},
      {"no value", "# TYPE x gauge\nx\n"},
      {"bad timestamp", "# TYPE x gauge\nx 1 12.5\n"},
      {"duplicate series", "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n"},
      {"split family", "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"2\"} 1\n"},
      {"negative counter", "# TYPE x counter\nx -1\n"},
      {"no trailing newline", "# TYPE x gauge\nx 1"},
      {"bucket without le", "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n"},
      {"no +Inf", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
      {"decreasing buckets",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
      {"count != +Inf",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
      {"summary without quantile", "# TYPE s summary\ns 1\n"},
  };
  for (const auto& [what, text] : bad) {
    PromFamilies f;
    EXPECT_NE(ParsePrometheus(text, &f), "") << what;
  }
}

// ---- Generate == offline -----------------------------------------------------------------------

TEST(DaemonTest, GenerateMatchesOfflineGreedy) {
  START_DAEMON(d, {});
  const std::vector<int32_t> eog = [&] {
    auto mi = ModelInfo(*d);
    return std::vector<int32_t>(mi.eos_token_ids().begin(), mi.eos_token_ids().end());
  }();
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 2, 3}, {586, 100, 200, 300, 400, 500, 42, 7}, {5}};
  for (const auto& prompt : prompts) {
    const std::vector<int32_t> offline = OfflineGenerate(prompt, 24);
    ASSERT_EQ(offline.size(), 24u);
    // The stub, ignoring EOG like the offline run.
    GenOut g = CallGenerate(d->stub(), GreedyRequest(prompt, 24));
    ASSERT_TRUE(g.status.ok()) << g.status.error_message();
    EXPECT_EQ(g.ids, offline) << "prompt " << Join(prompt);
    EXPECT_EQ(g.last.finish_reason(), "length");
    EXPECT_EQ(g.last.usage().prompt_tokens(), static_cast<int>(prompt.size()));
    EXPECT_EQ(g.last.usage().completion_tokens(), 24);
    // The CLI client (stops at end-of-generation ids).
    CmdResult c = RunCmd({kBinary, "client", "generate", "--server", d->addr(), "--prompt-ids",
                          Join(prompt), "--max-tokens", "24", "--temperature", "0"});
    ASSERT_EQ(c.code, 0) << c.err;
    EXPECT_EQ(ParseIds(c.out.substr(0, c.out.find('\n'))), CutAtEog(offline, eog)) << c.err;
  }
}

TEST(DaemonTest, GenerateMatchesOfflineWhile16StreamsRun) {
  START_DAEMON(d, {"--max-running", "32"});
  constexpr int kStreams = 16, kBackgroundTokens = 160, kTokens = 20;
  // Background prompts of different lengths (prefill chunks mixed with decodes).
  std::vector<std::vector<int32_t>> prompts(kStreams);
  for (int i = 0; i < kStreams; ++i)
    for (int j = 0; j < 1 + 3 * i; ++j) prompts[i].push_back((37 * i + 11 * j + 1) % 580);
  // Their offline references, four processes at a time.
  std::vector<std::vector<int32_t>> refs(kStreams);
  for (int i = 0; i < kStreams; i += 4) {
    std::vector<std::thread> ts;
    for (int k = i; k < i + 4; ++k)
      ts.emplace_back([&, k] { refs[k] = OfflineGenerate(prompts[k], kBackgroundTokens); });
    for (auto& t : ts) t.join();
  }
  const std::vector<int32_t> probe = {9, 8, 7, 6, 5, 4, 3, 2, 1};
  const std::vector<int32_t> probe_ref = OfflineGenerate(probe, kTokens);
  ASSERT_EQ(probe_ref.size(), static_cast<size_t>(kTokens));

  std::vector<GenOut> outs(kStreams);
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i)
    threads.emplace_back([&, i] {
      bool first = true;
      outs[i] = CallGenerate(d->stub(), GreedyRequest(prompts[i], kBackgroundTokens),
                             [&](const pb::GenerateResponse&) { if (first) { first = false; ++started; } });
    });
  // Wait until all 16 stream, then probe through the stub and the CLI at the same time.
  const double t_wait = Now() + 30;
  while (started < kStreams && Now() < t_wait) SleepMs(5);
  ASSERT_EQ(started.load(), kStreams);
  const pb::ServerInfoResponse busy = d->ServerInfo();
  EXPECT_EQ(busy.running_requests(), kStreams);
  CmdResult cli;
  std::thread cli_thread([&] {
    cli = RunCmd({kBinary, "client", "generate", "--server", d->addr(), "--prompt-ids", Join(probe),
                  "--max-tokens", std::to_string(kTokens), "--temperature", "0"});
  });
  GenOut probe_out = CallGenerate(d->stub(), GreedyRequest(probe, kTokens));
  cli_thread.join();
  const double probe_done = std::max(probe_out.t_end, Now());
  for (auto& t : threads) t.join();

  ASSERT_TRUE(probe_out.status.ok()) << probe_out.status.error_message();
  EXPECT_EQ(probe_out.ids, probe_ref);
  ASSERT_EQ(cli.code, 0) << cli.err;
  auto mi = ModelInfo(*d);
  EXPECT_EQ(ParseIds(cli.out.substr(0, cli.out.find('\n'))),
            CutAtEog(probe_ref, {mi.eos_token_ids().begin(), mi.eos_token_ids().end()}));
  double first_bg_end = 1e300;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(outs[i].status.ok()) << i << ": " << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, refs[i]) << "background stream " << i;
    first_bg_end = std::min(first_bg_end, outs[i].t_end);
  }
  // The probes ran entirely while the 16 streams were generating.
  EXPECT_LT(probe_done, first_bg_end);
}

TEST(DaemonTest, GenerateStopStringsAndDeadline) {
  START_DAEMON(d, {});
  const std::vector<int32_t> prompt = {1, 2, 3};
  GenOut full = CallGenerate(d->stub(), GreedyRequest(prompt, 40));
  ASSERT_TRUE(full.status.ok());
  // A stop string taken from the middle of the output: the text ends just before its first
  // occurrence, and the stop string is reported.
  ASSERT_GT(full.text.size(), 12u);
  std::string stop;
  size_t at = 0;
  for (size_t p = full.text.size() / 2; p + 3 <= full.text.size(); ++p) {
    const std::string cand = full.text.substr(p, 3);
    if (std::all_of(cand.begin(), cand.end(), [](char c) { return c > 32 && c < 127; })) {
      stop = cand;
      at = full.text.find(cand);
      break;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no printable 3-byte window in: " << full.text;
  pb::GenerateRequest req = GreedyRequest(prompt, 40);
  req.mutable_sampling()->add_stop(stop);
  GenOut s = CallGenerate(d->stub(), req);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.text, full.text.substr(0, at));
  EXPECT_EQ(s.last.finish_reason(), "stop");
  EXPECT_EQ(s.last.stop_reason(), stop);
  // A stop token id: generation ends at its first occurrence (included in the ids).
  req = GreedyRequest(prompt, 40);
  req.mutable_sampling()->add_stop_token_ids(full.ids[5]);
  GenOut si = CallGenerate(d->stub(), req);
  ASSERT_TRUE(si.status.ok());
  const size_t first = std::find(full.ids.begin(), full.ids.end(), full.ids[5]) - full.ids.begin();
  EXPECT_EQ(si.ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + first + 1));
  EXPECT_EQ(si.last.finish_reason(), "stop");
  EXPECT_EQ(si.last.stop_reason(), std::to_string(full.ids[5]));
  // A deadline far shorter than the generation.
  auto mi = ModelInfo(*d);
  req = GreedyRequest(prompt, static_cast<int>(std::min<int64_t>(mi.context_length() - 8, 4000)));
  req.set_deadline_seconds(0.2);
  GenOut dl = CallGenerate(d->stub(), req);
  EXPECT_EQ(dl.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << dl.status.error_message();
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.running_requests() == 0; }));
}

TEST(DaemonTest, GenerateTextInputLogprobsAndSeededSampling) {
  START_DAEMON(d, {});
  // Text input is tokenised without special-token parsing.
  const std::string text = "The capital of France is<|im_end|>";
  pb::GenerateRequest tr = GreedyRequest({}, 6);
  tr.clear_token_ids();
  tr.set_text(text);
  GenOut by_text = CallGenerate(d->stub(), tr);
  ASSERT_TRUE(by_text.status.ok()) << by_text.status.error_message();
  const std::vector<int32_t> ids = Tokenize(*d, text, false);
  EXPECT_EQ(by_text.last.usage().prompt_tokens(), static_cast<int>(ids.size()));
  EXPECT_EQ(by_text.ids, CallGenerate(d->stub(), GreedyRequest(ids, 6)).ids);
  // Logprobs: one entry per token with the requested number of alternatives; greedy picks the
  // most likely token (no penalties or bias here), whose logprob is the best one.
  pb::GenerateRequest lr = GreedyRequest({1, 2, 3}, 5);
  lr.mutable_sampling()->set_logprobs(3);
  int entries = 0;
  GenOut lp = CallGenerate(d->stub(), lr, [&](const pb::GenerateResponse& m) {
    ASSERT_EQ(m.logprobs_size(), m.token_ids_size());
    for (int i = 0; i < m.logprobs_size(); ++i, ++entries) {
      const auto& l = m.logprobs(i);
      EXPECT_EQ(l.token_id(), m.token_ids(i));
      EXPECT_LE(l.logprob(), 0.0f);
      ASSERT_EQ(l.top_size(), 3);
      EXPECT_EQ(l.top(0).token_id(), l.token_id());
      EXPECT_FLOAT_EQ(l.top(0).logprob(), l.logprob());
      EXPECT_GE(l.top(0).logprob(), l.top(1).logprob());
      EXPECT_GE(l.top(1).logprob(), l.top(2).logprob());
    }
  });
  ASSERT_TRUE(lp.status.ok()) << lp.status.error_message();
  EXPECT_EQ(entries, 5);
  // Seeded sampling is reproducible, also when other requests share the batch.
  auto sampled = [&](uint64_t seed) {
    pb::GenerateRequest r = GreedyRequest({7, 7, 7}, 24);
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_seed(seed);
    return r;
  };
  const GenOut s1 = CallGenerate(d->stub(), sampled(42));
  ASSERT_TRUE(s1.status.ok());
  GenOut s2, other;
  std::thread t([&] { other = CallGenerate(d->stub(), GreedyRequest({9, 9}, 40)); });
  s2 = CallGenerate(d->stub(), sampled(42));
  t.join();
  EXPECT_EQ(s2.ids, s1.ids);
  EXPECT_NE(CallGenerate(d->stub(), sampled(43)).ids, s1.ids);
  EXPECT_NE(s1.ids, CallGenerate(d->stub(), GreedyRequest({7, 7, 7}, 24)).ids);
}

// ---- Chat --------------------------------------------------------------------------------------

TEST(DaemonTest, ChatThinkingOnAndOff) {
  START_DAEMON(d, {});
  const int32_t think_close = Tokenize(*d, "</think>", true).at(0);
  // Thinking on (the default): the generation prompt opens <think>; output is reasoning until
  // the model closes it.
  ChatOut on = CallChat(d->stub(), UserChat("Hello there", 16, true));
  ASSERT_TRUE(on.status.ok()) << on.status.error_message();
  ASSERT_FALSE(on.kinds.empty());
  EXPECT_EQ(on.kinds[0], 'r') << on.kinds;
  EXPECT_FALSE(on.reasoning.empty());
  EXPECT_GT(on.usage.reasoning_tokens(), 0);
  EXPECT_EQ(on.usage.completion_tokens(), 16);
  EXPECT_EQ(on.ids.size(), 16u);
  auto close_at = std::find(on.ids.begin(), on.ids.end(), think_close);
  if (close_at == on.ids.end()) {
    EXPECT_EQ(on.content, "");
    EXPECT_EQ(on.kinds.find('c'), std::string::npos);
    EXPECT_EQ(on.usage.reasoning_tokens(), on.usage.completion_tokens());
  }
  // Never more reasoning tokens than generated ones, also when generation ends inside a UTF-8
  // character (the decoder's held bytes are flushed with the last token, not counted apart).
  // (Sampled with seeds that, on the tiny model, end mid-character: 14, 19 and 48 did.)
  for (uint64_t seed : {14, 19, 48, 49, 69}) {
    pb::ChatRequest req = UserChat("hi", 5, true);
    req.mutable_sampling()->set_temperature(1.0f);
    req.mutable_sampling()->set_seed(seed);
    ChatOut o = CallChat(d->stub(), req);
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_LE(o.usage.reasoning_tokens(), o.usage.completion_tokens()) << "seed " << seed;
  }
  // Thinking off: content only.
  ChatOut off = CallChat(d->stub(), UserChat("Hello there", 16, false));
  ASSERT_TRUE(off.status.ok()) << off.status.error_message();
  EXPECT_EQ(off.reasoning, "");
  EXPECT_EQ(off.usage.reasoning_tokens(), 0);
  EXPECT_EQ(off.kinds.find('r'), std::string::npos) << off.kinds;
  EXPECT_FALSE(off.content.empty());
  // enable_thinking=false renders the empty think block into the prompt.
  EXPECT_GT(off.usage.prompt_tokens(), on.usage.prompt_tokens());
  // The outputs differ (different prompts), and both are the model's greedy output: the same
  // request again gives the same ids.
  ChatOut off2 = CallChat(d->stub(), UserChat("Hello there", 16, false));
  EXPECT_EQ(off2.ids, off.ids);
  EXPECT_EQ(off2.content, off.content);
  // thinking_budget 0 means no reasoning at all.
  pb::ChatRequest nb = UserChat("Hello there", 8, true);
  nb.set_thinking_budget(0);
  ChatOut zero = CallChat(d->stub(), nb);
  ASSERT_TRUE(zero.status.ok()) << zero.status.error_message();
  EXPECT_EQ(zero.reasoning, "");
  EXPECT_EQ(zero.usage.reasoning_tokens(), 0);

  // The CLI client, with --json-out.
  const std::string json = ScratchFile("chat.json");
  CmdResult c = RunCmd({kBinary, "client", "chat", "--server", d->addr(), "--message", "Hello there",
                        "--max-tokens", "16", "--temperature", "0", "--no-think", "--quiet",
                        "--json-out", json});
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_NE(c.err.find("finish_reason="), std::string::npos) << c.err;
  const std::string j = ReadFile(json);
  EXPECT_NE(j.find("\"token_ids\":[" + [&] {
              std::string s;
              for (size_t i = 0; i < off.ids.size(); ++i) s += (i ? "," : "") + std::to_string(off.ids[i]);
              return s;
            }() + "]"),
            std::string::npos)
      << j;
}

TEST(DaemonTest, ChatThinkingBudgetEndsReasoning) {
  START_DAEMON(d, {});
  const int32_t think_close = Tokenize(*d, "</think>", true).at(0);
  pb::ChatRequest req = UserChat("Think briefly", 24, true);
  req.set_thinking_budget(3);
  // Keep the model from closing the reasoning by itself, so the budget must.
  (*req.mutable_sampling()->mutable_logit_bias())[think_close] = -100;
  ChatOut o = CallChat(d->stub(), req);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  // Reasoning first, then the forced close, then content.
  ASSERT_NE(o.kinds.find('r'), std::string::npos) << o.kinds;
  EXPECT_EQ(o.kinds[0], 'r');
  EXPECT_NE(std::find(o.ids.begin(), o.ids.end(), think_close), o.ids.end());
  const size_t last_r = o.kinds.rfind('r');
  const size_t first_c = o.kinds.find('c');
  ASSERT_NE(first_c, std::string::npos) << o.kinds;
  EXPECT_LT(last_r, first_c) << o.kinds;
  EXPECT_GT(o.usage.reasoning_tokens(), 0);
  EXPECT_LT(o.usage.reasoning_tokens(), 12) << "the budget of 3 did not end the reasoning";
  EXPECT_TRUE(WaitMetrics(*d, [](const PromFamilies& f) {
    return PromValue(f, "rigserve_thinking_budget_cutoffs_total") == 1 &&
           PromValue(f, "rigserve_reasoning_tokens_total") > 0;
  }));
}

// A tiny random model never writes a tool call by itself, so this test makes it write one:
// the call's tokens get logit biases in decreasing order (1000, 990, ...) and
// repetition_penalty 1e4 divides a token's (positive, biased) logit once it has appeared, so
// greedy decoding emits each biased token exactly once, in bias order. This needs the call's
// tokens to be distinct and absent from the prompt (the penalty also covers prompt tokens);
// <|im_end|> is in the prompt, so a bias of 1e6 puts it at ~100 after the penalty: below every
// unconsumed call token, above every other logit, so it ends the turn right after the call.
// The call is "<tool_call><function=capital></tool_call>": the Qwen3.5 XML form with no
// parameters (the tiny vocabulary has no distinct tokens for a second '<'/'='). The parser of
// arbitrary calls (parameters, JSON form, typed values, streaming splits) is tested in
// output_parser_test.cc; this test checks the daemon wires it in end to end.
TEST(DaemonTest, ChatForcedToolCallIsParsed) {
  START_DAEMON(d, {});
  const std::vector<std::string> pieces = {"<tool_call>", "<", "f", "unction", "=", "c",
                                           "apital", ">", "</tool_call>"};
  std::vector<int32_t> call_ids;
  for (const auto& p : pieces) {
    auto ids = Tokenize(*d, p, true);
    ASSERT_EQ(ids.size(), 1u) << "'" << p << "' is not one token of the tiny vocabulary";
    call_ids.push_back(ids[0]);
  }
  const int32_t im_end = Tokenize(*d, "<|im_end|>", true).at(0);
  pb::ChatRequest req = UserChat("", 32, false);
  // The prompt's tokens (the built-in template: user turn, generation prompt without thinking).
  const std::vector<int32_t> prompt_ids =
      Tokenize(*d, "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", true);
  for (size_t i = 0; i < call_ids.size(); ++i) {
    EXPECT_EQ(std::count(call_ids.begin(), call_ids.end(), call_ids[i]), 1) << pieces[i];
    EXPECT_EQ(std::count(prompt_ids.begin(), prompt_ids.end(), call_ids[i]), 0) << pieces[i];
    (*req.mutable_sampling()->mutable_logit_bias())[call_ids[i]] = 1000.0f - 10.0f * i;
  }
  (*req.mutable_sampling()->mutable_logit_bias())[im_end] = 1e6f;
  req.mutable_sampling()->set_repetition_penalty(1e4f);
  ChatOut o = CallChat(d->stub(), req);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  std::vector<int32_t> want = call_ids;
  want.push_back(im_end);
  ASSERT_EQ(o.ids, want) << "the forcing did not produce the call tokens";
  ASSERT_EQ(o.calls.size(), 1u) << "content: " << o.content;
  EXPECT_EQ(o.calls[0].name(), "capital");
  EXPECT_EQ(o.calls[0].arguments(), "{}");
  EXPECT_FALSE(o.calls[0].id().empty());
  EXPECT_EQ(o.content, "");
  EXPECT_FALSE(o.parse_failed);
  EXPECT_EQ(o.finish_reason, "tool_calls");
  EXPECT_EQ(o.usage.prompt_tokens(), static_cast<int>(prompt_ids.size()));

  // The next turn carries the call and its result back (assistant tool_calls + a tool message).
  pb::ChatRequest next = UserChat("", 4, false);
  auto* a = next.add_messages();
  a->set_role("assistant");
  auto* tc = a->add_tool_calls();
  tc->set_id(o.calls[0].id());
  tc->set_name(o.calls[0].name());
  tc->set_arguments(o.calls[0].arguments());
  auto* t = next.add_messages();
  t->set_role("tool");
  t->set_tool_call_id(o.calls[0].id());
  t->set_content("Paris");
  ChatOut o2 = CallChat(d->stub(), next);
  ASSERT_TRUE(o2.status.ok()) << o2.status.error_message();
  EXPECT_GT(o2.usage.prompt_tokens(), o.usage.prompt_tokens() + 8);
}

TEST(DaemonTest, ChatToolsAreRenderedAndAMalformedCallIsContent) {
  START_DAEMON(d, {});
  const std::string tools =
      R"([{"type":"function","function":{"name":"get_weather","description":"Weather of a city",)"
      R"("parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},)"
      R"("required":["city"]}}}])";
  ChatOut plain = CallChat(d->stub(), UserChat("Weather in Paris?", 4, false));
  pb::ChatRequest with = UserChat("Weather in Paris?", 4, false);
  with.set_tools_json(tools);
  ChatOut withtools = CallChat(d->stub(), with);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  ASSERT_TRUE(withtools.status.ok()) << withtools.status.error_message();
  // The tools block (with the schema) is in the rendered prompt.
  EXPECT_GT(withtools.usage.prompt_tokens(),
            plain.usage.prompt_tokens() + static_cast<int>(Tokenize(*d, tools, false).size()) / 2);
  // An unclosed <tool_call> (the only biased token) ends as content, verbatim, marked failed.
  const int32_t call_open = Tokenize(*d, "<tool_call>", true).at(0);
  pb::ChatRequest forced = with;
  (*forced.mutable_sampling()->mutable_logit_bias())[call_open] = 100;
  forced.mutable_sampling()->set_max_tokens(3);
  ChatOut bad = CallChat(d->stub(), forced);
  ASSERT_TRUE(bad.status.ok()) << bad.status.error_message();
  EXPECT_EQ(bad.ids, std::vector<int32_t>(3, call_open));
  EXPECT_TRUE(bad.parse_failed);
  EXPECT_TRUE(bad.calls.empty());
  EXPECT_EQ(bad.content.rfind("<tool_call>", 0), 0u) << bad.content;
  EXPECT_EQ(bad.finish_reason, "length");
  EXPECT_TRUE(WaitMetrics(*d, [](const PromFamilies& f) {
    return PromValue(f, "rigserve_tool_call_parse_failures_total") == 1;
  }));
}

TEST(DaemonTest, ChatSecondTurnReusesStateAndMatchesColdRun) {
  std::string warm_error;
  auto warm = Daemon::Start({}, &warm_error, true, TinyModelF32());
  ASSERT_NE(warm, nullptr) << warm_error;
  ChatOut t1 = CallChat(warm->stub(), UserChat("Tell me a story", 12, false));
  ASSERT_TRUE(t1.status.ok()) << t1.status.error_message();
  EXPECT_EQ(t1.usage.cached_tokens(), 0);
  pb::ChatRequest turn2 = UserChat("Tell me a story", 12, false);
  auto* a = turn2.add_messages();
  a->set_role("assistant");
  a->set_content(t1.content);
  auto* u = turn2.add_messages();
  u->set_role("user");
  u->set_content("And then?");
  ChatOut t2 = CallChat(warm->stub(), turn2);
  ASSERT_TRUE(t2.status.ok()) << t2.status.error_message();
  // The first turn's state was kept: at least the conversation up to its generation prompt.
  // (The template renders a past assistant turn without the empty think block the generation
  // prompt had, so the state after the generated tokens is no prefix of the second prompt.)
  const int gen_prompt =
      static_cast<int>(Tokenize(*warm, "<|im_start|>assistant\n<think>\n\n</think>\n\n", true).size());
  EXPECT_GT(t2.usage.cached_tokens(), 0);
  EXPECT_LT(t2.usage.cached_tokens(), t2.usage.prompt_tokens());
  EXPECT_GE(t2.usage.cached_tokens(), t1.usage.prompt_tokens() - gen_prompt);
  // A cold server gives the same second turn, prefilling everything.
  std::string cold_error;
  auto cold = Daemon::Start({}, &cold_error, true, TinyModelF32());
  ASSERT_NE(cold, nullptr) << cold_error;
  ChatOut c2 = CallChat(cold->stub(), turn2);
  ASSERT_TRUE(c2.status.ok()) << c2.status.error_message();
  EXPECT_EQ(c2.usage.cached_tokens(), 0);
  EXPECT_EQ(c2.usage.prompt_tokens(), t2.usage.prompt_tokens());
  EXPECT_EQ(c2.ids, t2.ids);
  EXPECT_EQ(c2.content, t2.content);
  // The reuse shows in /metrics.
  PromFamilies f = Scrape(*warm);
  EXPECT_GE(PromValue(f, "rigserve_deltanet_state_reuse_hits_total"), 1);
  EXPECT_EQ(PromValue(f, "vllm:prefix_cache_hits_total"), t2.usage.cached_tokens());
  EXPECT_EQ(PromValue(f, "vllm:prefix_cache_queries_total"),
            t1.usage.prompt_tokens() + t2.usage.prompt_tokens());
}

// A continuation through Generate: the second prompt is the first prompt, the generated ids and
// new ids, so the kept state (prompt + all generated ids but the last, never fed) covers all
// but the new part: DeltaNet recurrent/conv state and KV resumed mid-sequence. The output must
// equal offline generation over the whole second prompt. On the F32 tiny model: the resumed
// prefill is short (the token-by-token delta rule), the cold one long (the chunked form, which
// rounds differently); on the quantised model q8 activation rounding turned that difference
// into other greedy ids after 7 tokens.
TEST(DaemonTest, GenerateContinuationResumesTheKeptState) {
  std::string d_error;
  auto d = Daemon::Start({}, &d_error, true, TinyModelF32());
  ASSERT_NE(d, nullptr) << d_error;
  const std::vector<int32_t> p1 = {3, 1, 4, 1, 5, 9, 2, 6};
  GenOut g1 = CallGenerate(d->stub(), GreedyRequest(p1, 10));
  ASSERT_TRUE(g1.status.ok());
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), g1.ids.begin(), g1.ids.end());
  p2.insert(p2.end(), {5, 3, 5});
  GenOut g2 = CallGenerate(d->stub(), GreedyRequest(p2, 12));
  ASSERT_TRUE(g2.status.ok());
  EXPECT_EQ(g2.last.usage().cached_tokens(), static_cast<int>(p1.size() + g1.ids.size() - 1));
  EXPECT_EQ(g2.last.usage().prompt_tokens(), static_cast<int>(p2.size()));
  EXPECT_EQ(g2.ids, OfflineGenerate(p2, 12, TinyModelF32()));
  // A prompt that diverges inside the kept tokens reuses nothing.
  std::vector<int32_t> p3 = p2;
  p3[2] = 7;
  GenOut g3 = CallGenerate(d->stub(), GreedyRequest(p3, 4));
  ASSERT_TRUE(g3.status.ok());
  EXPECT_EQ(g3.last.usage().cached_tokens(), 0);
  EXPECT_EQ(g3.ids, OfflineGenerate(p3, 4, TinyModelF32()));
}

// ---- slots: abort, disconnect, queueing ---------------------------------------------------------

TEST(DaemonTest, AbortFreesTheSlot) {
  START_DAEMON(d, {});
  const pb::ServerInfoResponse idle = d->ServerInfo();
  EXPECT_EQ(idle.running_requests(), 0);
  const int long_tokens = static_cast<int>(std::min<int64_t>(ModelInfo(*d).context_length() - 16, 100000));
  pb::GenerateRequest req = GreedyRequest({1, 2, 3}, long_tokens);
  req.set_request_id("abort-me");
  std::atomic<int> got{0};
  GenOut out;
  std::thread t([&] {
    out = CallGenerate(d->stub(), req, [&](const pb::GenerateResponse& m) { got += m.token_ids_size(); });
  });
  while (got < 8) SleepMs(5);
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.running_requests() == 1; }));
  EXPECT_EQ(d->ServerInfo().state_slots_used(), idle.state_slots_used() + 1);
  EXPECT_TRUE(WaitMetrics(*d, [](const PromFamilies& f) {
    return PromValue(f, "vllm:num_requests_running") == 1;
  }));
  {
    grpc::ClientContext ctx;
    pb::AbortRequest ar;
    ar.set_request_id("abort-me");
    pb::AbortResponse resp;
    ASSERT_TRUE(d->stub().Abort(&ctx, ar, &resp).ok());
    EXPECT_TRUE(resp.found());
  }
  t.join();
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::CANCELLED) << out.status.error_message();
  EXPECT_LT(static_cast<int>(out.ids.size()), long_tokens);
  ASSERT_GE(out.ids.size(), 8u);
  // The slot is free at once (the aborted state is not kept).
  EXPECT_TRUE(d->WaitInfo([&](const auto& i) {
    return i.running_requests() == 0 && i.state_slots_used() == idle.state_slots_used();
  }, 5));
  EXPECT_TRUE(WaitMetrics(*d, [&](const PromFamilies& f) {
    return PromValue(f, "vllm:num_requests_running") == 0 &&
           PromValue(f, "rigserve_state_slots_used") == idle.state_slots_used();
  }, 5));
  // An unknown id is not found; the server still serves.
  {
    grpc::ClientContext ctx;
    pb::AbortRequest ar;
    ar.set_request_id("no-such-request");
    pb::AbortResponse resp;
    ASSERT_TRUE(d->stub().Abort(&ctx, ar, &resp).ok());
    EXPECT_FALSE(resp.found());
  }
  GenOut after = CallGenerate(d->stub(), GreedyRequest({1, 2, 3}, 8));
  ASSERT_TRUE(after.status.ok());
  EXPECT_EQ(after.ids, std::vector<int32_t>(out.ids.begin(), out.ids.begin() + 8));
}

TEST(DaemonTest, ClientDisconnectFreesTheSlot) {
  START_DAEMON(d, {});
  const pb::ServerInfoResponse idle = d->ServerInfo();
  const double failed_before = PromValue(Scrape(*d), "rigserve_requests_failed_total");
  const int long_tokens = static_cast<int>(std::min<int64_t>(ModelInfo(*d).context_length() - 16, 100000));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(50));
  auto reader = d->stub().Generate(&ctx, GreedyRequest({4, 5, 6}, long_tokens));
  pb::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.running_requests() == 1; }));
  ctx.TryCancel();  // the client goes away
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(d->WaitInfo([&](const auto& i) {
    return i.running_requests() == 0 && i.state_slots_used() == idle.state_slots_used();
  }, 5));
  EXPECT_TRUE(WaitMetrics(*d, [&](const PromFamilies& f) {
    return PromValue(f, "vllm:num_requests_running") == 0 &&
           PromValue(f, "rigserve_state_slots_used") == idle.state_slots_used() &&
           PromValue(f, "rigserve_requests_failed_total") == failed_before + 1;
  }, 5));
  GenOut after = CallGenerate(d->stub(), GreedyRequest({4, 5, 6}, 4));
  EXPECT_TRUE(after.status.ok());
}

TEST(DaemonTest, FullServerQueuesThenServes) {
  START_DAEMON(d, {"--max-running", "1", "--max-waiting", "2"});
  std::atomic<bool> a_first{false}, stop_monitor{false};
  std::atomic<int> max_running{0};
  // Samples ServerInfo throughout: never more than one request runs.
  std::thread monitor([&] {
    while (!stop_monitor) {
      max_running = std::max(max_running.load(), d->ServerInfo().running_requests());
      SleepMs(5);
    }
  });
  GenOut a, b, c;
  std::thread ta([&] {
    a = CallGenerate(d->stub(), GreedyRequest({1, 2, 3}, 1500), [&](const auto&) { a_first = true; });
  });
  while (!a_first) SleepMs(5);
  std::thread tb([&] { b = CallGenerate(d->stub(), GreedyRequest({7, 8, 9}, 8)); });
  // B waits behind A.
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.waiting_requests() == 1 && i.running_requests() == 1; }));
  EXPECT_TRUE(WaitMetrics(*d, [](const PromFamilies& f) {
    return PromValue(f, "vllm:num_requests_waiting") == 1 && PromValue(f, "vllm:num_requests_running") == 1;
  }));
  // A third waits too; aborting it while queued answers CANCELLED and empties its place.
  pb::GenerateRequest creq = GreedyRequest({10, 11}, 8);
  creq.set_request_id("queued-c");
  std::thread tc([&] { c = CallGenerate(d->stub(), creq); });
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.waiting_requests() == 2; }));
  // The queue is full (--max-waiting 2): a fourth is refused.
  GenOut refused = CallGenerate(d->stub(), GreedyRequest({12}, 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.status.error_message();
  {
    grpc::ClientContext ctx;
    pb::AbortRequest ar;
    ar.set_request_id("queued-c");
    pb::AbortResponse resp;
    ASSERT_TRUE(d->stub().Abort(&ctx, ar, &resp).ok());
    EXPECT_TRUE(resp.found());
  }
  // The aborted request leaves the queue at once, while A still runs.
  tc.join();
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(d->ServerInfo().waiting_requests(), 1);
  EXPECT_TRUE(WaitMetrics(*d, [](const PromFamilies& f) { return PromValue(f, "vllm:num_requests_waiting") == 1; }));
  ta.join();
  tb.join();
  EXPECT_LT(c.t_end, a.t_end);
  stop_monitor = true;
  monitor.join();
  EXPECT_EQ(max_running.load(), 1);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(a.ids.size(), 1500u);
  // B started only after A finished (one running slot; client-side times, so some slack for
  // scheduling on a loaded machine), and gives its solo output.
  EXPECT_GE(b.t_first, a.t_end - 0.5);
  EXPECT_EQ(b.ids, OfflineGenerate({7, 8, 9}, 8));
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.waiting_requests() == 0 && i.running_requests() == 0; }));
}

TEST(DaemonTest, QueuedRequestMeetsItsDeadline) {
  START_DAEMON(d, {"--max-running", "1"});
  std::atomic<bool> a_first{false};
  GenOut a;
  std::thread ta([&] {
    a = CallGenerate(d->stub(), GreedyRequest({1, 2, 3}, 1500), [&](const auto&) { a_first = true; });
  });
  while (!a_first) SleepMs(5);
  pb::GenerateRequest breq = GreedyRequest({4, 5}, 4);
  breq.set_deadline_seconds(0.3);
  const double t0 = Now();
  GenOut b = CallGenerate(d->stub(), breq);
  EXPECT_EQ(b.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << b.status.error_message();
  EXPECT_EQ(b.messages, 0);
  EXPECT_LT(b.t_end - t0, 5.0);
  EXPECT_EQ(d->ServerInfo().waiting_requests(), 0);
  ta.join();
  ASSERT_TRUE(a.status.ok());
  EXPECT_LT(b.t_end, a.t_end);
}

// Several sequences finishing in the same step each keep their state while the LRU (here one
// entry) evicts the others' still-unsent keeps. This once leaked kept copies on the worker until
// a keep failed with "no free state slot" and the whole batch failed with it.
TEST(DaemonTest, ManySequencesFinishingTogetherKeepTheSlotsBounded) {
  START_DAEMON(d, {"--max-running", "8", "--max-kept", "1"});
  constexpr int kStreams = 8, kRounds = 6;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<GenOut> outs(kStreams);
    std::vector<std::thread> ts;
    for (int i = 0; i < kStreams; ++i)
      ts.emplace_back([&, i] {
        // Same prompt length and max_tokens: streams admitted in the same step finish together.
        outs[i] = CallGenerate(d->stub(), GreedyRequest({100 + round, 200 + i, 300, 400}, 6));
      });
    for (auto& t : ts) t.join();
    for (int i = 0; i < kStreams; ++i)
      ASSERT_TRUE(outs[i].status.ok()) << "round " << round << " stream " << i << ": "
                                       << outs[i].status.error_message();
    EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.running_requests() == 0 && i.state_slots_used() <= 1; }))
        << "slots used: " << d->ServerInfo().state_slots_used();
  }
  EXPECT_EQ(PromValue(Scrape(*d), "rigserve_requests_failed_total"), 0);
}

// ---- validation ---------------------------------------------------------------------------------

TEST(DaemonTest, InvalidRequestsNameTheField) {
  START_DAEMON(d, {});
  const GenOut before = CallGenerate(d->stub(), GreedyRequest({1, 2, 3}, 8));
  ASSERT_TRUE(before.status.ok());
  const double failed_before = PromValue(Scrape(*d), "rigserve_requests_failed_total");
  auto gen = [&](const std::function<void(pb::GenerateRequest&)>& edit) {
    pb::GenerateRequest r = GreedyRequest({1, 2, 3}, 8);
    edit(r);
    return r;
  };
  const std::vector<std::tuple<std::string, pb::GenerateRequest, std::string>> gens = {
      {"no input", [] { pb::GenerateRequest r; r.mutable_sampling()->set_max_tokens(4); return r; }(), "input"},
      {"empty ids", gen([](auto& r) { r.mutable_token_ids()->clear_ids(); }), "input"},
      {"empty text", gen([](auto& r) { r.set_text(""); }), "input"},
      {"unknown id", gen([](auto& r) { r.mutable_token_ids()->add_ids(640); }), "token_ids"},
      {"negative id", gen([](auto& r) { r.mutable_token_ids()->add_ids(-1); }), "token_ids"},
      {"max_tokens 0", gen([](auto& r) { r.mutable_sampling()->set_max_tokens(0); }), "max_tokens"},
      {"max_tokens -5", gen([](auto& r) { r.mutable_sampling()->set_max_tokens(-5); }), "max_tokens"},
      {"max_tokens huge", gen([](auto& r) { r.mutable_sampling()->set_max_tokens(2000000000); }), "max_tokens"},
      {"temperature < 0", gen([](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }), "temperature"},
      {"temperature NaN", gen([](auto& r) { r.mutable_sampling()->set_temperature(std::nanf("")); }), "temperature"},
      {"top_p > 1", gen([](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }), "top_p"},
      {"top_p 0", gen([](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }), "top_p"},
      {"top_k -2", gen([](auto& r) { r.mutable_sampling()->set_top_k(-2); }), "top_k"},
      {"min_p 2", gen([](auto& r) { r.mutable_sampling()->set_min_p(2.0f); }), "min_p"},
      {"presence_penalty 3", gen([](auto& r) { r.mutable_sampling()->set_presence_penalty(3.0f); }), "presence_penalty"},
      {"frequency_penalty -3", gen([](auto& r) { r.mutable_sampling()->set_frequency_penalty(-3.0f); }), "frequency_penalty"},
      {"repetition_penalty 0", gen([](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); }), "repetition_penalty"},
      {"logprobs 21", gen([](auto& r) { r.mutable_sampling()->set_logprobs(21); }), "logprobs"},
      {"logit_bias id", gen([](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[100000] = 1; }), "logit_bias"},
      {"stop id", gen([](auto& r) { r.mutable_sampling()->add_stop_token_ids(9999); }), "stop_token_ids"},
      {"empty stop", gen([](auto& r) { r.mutable_sampling()->add_stop(""); }), "stop"},
      {"min_tokens -1", gen([](auto& r) { r.mutable_sampling()->set_min_tokens(-1); }), "min_tokens"},
      {"deadline -1", gen([](auto& r) { r.set_deadline_seconds(-1); }), "deadline_seconds"},
  };
  for (const auto& [what, req, field] : gens) {
    GenOut o = CallGenerate(d->stub(), req);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << what << ": " << o.status.error_message();
    EXPECT_NE(o.status.error_message().find(field), std::string::npos)
        << what << ": '" << o.status.error_message() << "' does not name " << field;
    EXPECT_EQ(o.messages, 0) << what;
  }
  auto chat = [&](const std::function<void(pb::ChatRequest&)>& edit) {
    pb::ChatRequest r = UserChat("hi", 4, false);
    edit(r);
    return r;
  };
  const std::vector<std::tuple<std::string, pb::ChatRequest, std::string>> chats = {
      {"no messages", chat([](auto& r) { r.clear_messages(); }), "messages"},
      {"bad role", chat([](auto& r) { r.mutable_messages(0)->set_role("robot"); }), "role"},
      {"empty role", chat([](auto& r) { r.mutable_messages(0)->set_role(""); }), "role"},
      {"tools not JSON", chat([](auto& r) { r.set_tools_json("[{\"type\":"); }), "tools_json"},
      {"tools not an array", chat([](auto& r) { r.set_tools_json("{\"type\":\"function\"}"); }), "tools_json"},
      {"kwargs not an object", chat([](auto& r) { r.set_chat_template_kwargs_json("[1,2]"); }), "chat_template_kwargs_json"},
      {"kwargs not JSON", chat([](auto& r) { r.set_chat_template_kwargs_json("{enable_thinking}"); }), "chat_template_kwargs_json"},
      {"thinking_budget -1", chat([](auto& r) { r.set_thinking_budget(-1); }), "thinking_budget"},
      {"tool call args", chat([](auto& r) {
         auto* m = r.add_messages();
         m->set_role("assistant");
         auto* tc = m->add_tool_calls();
         tc->set_name("f");
         tc->set_arguments("{not json");
       }), "arguments"},
      {"chat top_p", chat([](auto& r) { r.mutable_sampling()->set_top_p(7.0f); }), "top_p"},
      {"chat max_tokens 0", chat([](auto& r) { r.mutable_sampling()->set_max_tokens(0); }), "max_tokens"},
  };
  for (const auto& [what, req, field] : chats) {
    ChatOut o = CallChat(d->stub(), req);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << what << ": " << o.status.error_message();
    EXPECT_NE(o.status.error_message().find(field), std::string::npos)
        << what << ": '" << o.status.error_message() << "' does not name " << field;
  }
  // Nothing else is disturbed: no request is left running or queued, none counted as failed,
  // and the same request gives the same output.
  pb::ServerInfoResponse info = d->ServerInfo();
  EXPECT_EQ(info.running_requests(), 0);
  EXPECT_EQ(info.waiting_requests(), 0);
  EXPECT_TRUE(d->alive());
  EXPECT_EQ(PromValue(Scrape(*d), "rigserve_requests_failed_total"), failed_before);
  GenOut again = CallGenerate(d->stub(), GreedyRequest({1, 2, 3}, 8));
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.ids, before.ids);
}

// ---- health, metrics, info ---------------------------------------------------------------------

TEST(DaemonTest, HealthIsNotServingWhileLoadingThenServing) {
  std::string error;
  auto d = Daemon::Start({"--debug-load-delay-ms", "2500"}, &error, /*wait_serving=*/false);
  ASSERT_NE(d, nullptr) << error;
  // Loading: the server answers health NOT_SERVING, and the API UNAVAILABLE.
  grpc::Status st;
  auto h = d->Health("", &st);
  ASSERT_TRUE(h.has_value()) << st.error_message();
  EXPECT_EQ(*h, hp::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(d->Health("rigserve.v1.Inference"), hp::HealthCheckResponse::NOT_SERVING);
  GenOut early = CallGenerate(d->stub(), GreedyRequest({1, 2}, 2));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE) << early.status.error_message();
  {
    grpc::ClientContext ctx;
    pb::ServerInfoResponse r;
    EXPECT_EQ(d->stub().ServerInfo(&ctx, pb::ServerInfoRequest(), &r).error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  // /metrics is up already, load progress still 0.
  PromFamilies f = Scrape(*d);
  EXPECT_EQ(PromValue(f, "rigserve_model_load_progress"), 0);
  // Then SERVING, for the server and the Inference service; an unknown service is NOT_FOUND.
  ASSERT_TRUE(d->WaitServing(40)) << d->Log();
  EXPECT_EQ(d->Health("rigserve.v1.Inference"), hp::HealthCheckResponse::SERVING);
  grpc::Status unknown;
  EXPECT_FALSE(d->Health("no.such.Service", &unknown).has_value());
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(PromValue(Scrape(*d), "rigserve_model_load_progress"), 1);
  GenOut later = CallGenerate(d->stub(), GreedyRequest({1, 2}, 2));
  EXPECT_TRUE(later.status.ok()) << later.status.error_message();
  // The log shows load progress (bytes, percent, time).
  EXPECT_NE(d->Log().find("loading weights:"), std::string::npos) << d->Log();
  EXPECT_NE(d->Log().find("(100%)"), std::string::npos) << d->Log();
}

TEST(DaemonTest, MetricsScrapeIsStrictlyValidAndCountsTheTraffic) {
  START_DAEMON(d, {"--max-running", "4", "--max-kept", "2"});
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9}};
  const std::vector<int> maxt = {5, 9, 3};
  int prompt_total = 0, gen_total = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenOut g = CallGenerate(d->stub(), GreedyRequest(prompts[i], maxt[i]));
    ASSERT_TRUE(g.status.ok());
    prompt_total += static_cast<int>(prompts[i].size());
    gen_total += maxt[i];
  }
  ChatOut c = CallChat(d->stub(), UserChat("Hi", 6, true));
  ASSERT_TRUE(c.status.ok());
  prompt_total += c.usage.prompt_tokens();
  gen_total += 6;
  PromFamilies f;
  ASSERT_TRUE(WaitMetrics(*d, [&](const PromFamilies& x) {
    f = x;
    return PromValue(x, "vllm:num_requests_running") == 0;
  }));
  for (const char* name :
       {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds", "vllm:request_success_total",
        "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
        "rigserve_worker_step_seconds", "rigserve_state_slots_used", "rigserve_state_slots_total",
        "rigserve_deltanet_state_reuse_hits_total", "rigserve_reasoning_tokens_total",
        "rigserve_thinking_budget_cutoffs_total", "rigserve_tool_call_parse_failures_total",
        "rigserve_model_load_progress", "rigserve_worker_up"}) {
    ASSERT_TRUE(f.count(name)) << name << " is missing";
    EXPECT_TRUE(f[name].has_help) << name;
    EXPECT_FALSE(f[name].samples.empty()) << name;
  }
  EXPECT_EQ(f["vllm:time_to_first_token_seconds"].type, "histogram");
  EXPECT_EQ(f["vllm:inter_token_latency_seconds"].type, "histogram");
  EXPECT_EQ(f["vllm:e2e_request_latency_seconds"].type, "histogram");
  EXPECT_EQ(f["rigserve_worker_step_seconds"].type, "histogram");
  EXPECT_EQ(f["vllm:prompt_tokens_total"].type, "counter");
  EXPECT_EQ(f["vllm:num_requests_running"].type, "gauge");
  // The counts match the traffic exactly (no prefix hits: distinct prompts).
  const double hits = PromValue(f, "vllm:prefix_cache_hits_total");
  EXPECT_EQ(PromValue(f, "vllm:generation_tokens_total"), gen_total);
  EXPECT_EQ(PromValue(f, "vllm:prompt_tokens_total"), prompt_total - hits);
  EXPECT_EQ(PromValue(f, "vllm:prefix_cache_queries_total"), prompt_total);
  EXPECT_EQ(PromValue(f, "vllm:time_to_first_token_seconds_count"), 4);
  EXPECT_EQ(PromValue(f, "vllm:e2e_request_latency_seconds_count"), 4);
  EXPECT_EQ(PromValue(f, "vllm:inter_token_latency_seconds_count"), gen_total - 4);
  EXPECT_EQ(PromValue(f, "vllm:request_success_total", {{"finished_reason", "length"}}), 4);
  EXPECT_GT(PromValue(f, "rigserve_worker_step_seconds_count"), 0);
  EXPECT_EQ(PromValue(f, "rigserve_state_slots_total"), 4 + 2);
  EXPECT_EQ(PromValue(f, "rigserve_state_slots_used"), d->ServerInfo().state_slots_used());
  EXPECT_EQ(PromValue(f, "rigserve_worker_up"), 1);
  EXPECT_EQ(PromValue(f, "rigserve_model_load_progress"), 1);
  EXPECT_EQ(PromValue(f, "rigserve_reasoning_tokens_total"), c.usage.reasoning_tokens());
  for (const auto& s : f["vllm:num_requests_running"].samples) EXPECT_TRUE(s.labels.count("model_name"));
  for (const auto& s : f["rigserve_worker_up"].samples) EXPECT_TRUE(s.labels.count("worker"));
}

TEST(DaemonTest, ModelInfoServerInfoTokenize) {
  START_DAEMON(d, {"--max-running", "5", "--max-kept", "3"});
  const pb::ModelInfoResponse mi = ModelInfo(*d);
  EXPECT_EQ(mi.architecture(), "qwen35moe");
  EXPECT_EQ(mi.n_vocab(), 640);
  EXPECT_EQ(mi.n_layer(), 8);
  EXPECT_EQ(mi.n_embd(), 256);
  EXPECT_EQ(mi.n_expert(), 16);
  EXPECT_EQ(mi.n_expert_used(), 4);
  EXPECT_GT(mi.context_length(), 0);
  EXPECT_FALSE(mi.chat_template().empty());
  const int32_t im_end = Tokenize(*d, "<|im_end|>", true).at(0);
  EXPECT_NE(std::find(mi.eos_token_ids().begin(), mi.eos_token_ids().end(), im_end), mi.eos_token_ids().end());

  const pb::ServerInfoResponse s1 = d->ServerInfo();
  EXPECT_EQ(s1.running_requests(), 0);
  EXPECT_EQ(s1.waiting_requests(), 0);
  EXPECT_EQ(s1.workers_total(), 1);
  EXPECT_EQ(s1.workers_up(), 1);
  EXPECT_EQ(s1.state_slots_total(), 5 + 3);
  EXPECT_EQ(s1.state_slots_used(), 0);
  EXPECT_FALSE(s1.version().empty());
  EXPECT_GT(s1.uptime_seconds(), 0);
  SleepMs(50);
  const pb::ServerInfoResponse s2 = d->ServerInfo();
  EXPECT_GT(s2.uptime_seconds(), s1.uptime_seconds());
  // A finished request's state is kept for the next turn: one slot used.
  ASSERT_TRUE(CallGenerate(d->stub(), GreedyRequest({1, 2}, 3)).status.ok());
  EXPECT_TRUE(d->WaitInfo([](const auto& i) { return i.state_slots_used() == 1; }));

  // Tokenize agrees with the offline tokenizer, with and without special-token parsing.
  for (const std::string text : {"Hello, world!", "<|im_start|>user\nThe capital of France?<|im_end|>",
                                 "  spaces\tand\nnewlines  ", "unicode: caf\xc3\xa9 \xe2\x82\xac"}) {
    for (bool special : {true, false}) {
      std::vector<std::string> argv = {kBinary, "tokenize", "--model", TinyModel()};
      if (!special) argv.push_back("--no-special");
      CmdResult r = RunCmd(argv, text);
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_EQ(Tokenize(*d, text, special), ParseIds(r.out)) << text << " special=" << special;
    }
  }
  EXPECT_EQ(Tokenize(*d, "<|im_end|>", true).size(), 1u);
  EXPECT_GT(Tokenize(*d, "<|im_end|>", false).size(), 1u);
}

// The registry of `coordinator --expect-workers`: pipeline order (ranks first, then
// registration order), replacement before the order is fixed, heartbeats, and a worker that
// registers again taking over a slot whose worker does not answer. Nothing listens on the
// addresses (127.0.0.1 ports 1..5), so every slot's worker counts as down.
TEST(WorkerRegistry, OrderReplacementHeartbeatAndTakeover) {
  WorkerRegistry reg(3, 1.0);
  std::vector<std::pair<int, std::string>> rebinds;
  reg.set_on_rebind([&](int slot, const std::string& a) { rebinds.emplace_back(slot, a); });
  auto req = [](int port, uint64_t instance, std::optional<int> rank = std::nullopt) {
    rigserve::v1::RegisterRequest r;
    r.set_address("127.0.0.1:" + std::to_string(port));
    r.set_instance(instance);
    r.set_device("cpu");
    if (rank) r.set_rank(*rank);
    return r;
  };
  EXPECT_EQ(*reg.Register(req(1, 10)), -1);
  EXPECT_EQ(*reg.Register(req(2, 20, 0)), -1);
  EXPECT_EQ(*reg.Register(req(1, 11)), -1);  // restarted before the order was fixed: replaces
  EXPECT_EQ(reg.registered(), 2);
  EXPECT_TRUE(absl::IsInvalidArgument(reg.Register(req(3, 30, 3)).status()));  // rank >= 3
  EXPECT_TRUE(absl::IsInvalidArgument(reg.Register(rigserve::v1::RegisterRequest()).status()));
  EXPECT_EQ(*reg.Register(req(3, 30)), 2);  // order: rank 0, then registration order
  std::atomic<bool> stop{false};
  auto slots = reg.WaitForAll(stop);
  ASSERT_TRUE(slots.ok());
  ASSERT_EQ(slots->size(), 3u);
  EXPECT_EQ((*slots)[0]->address(), "127.0.0.1:2");
  EXPECT_EQ((*slots)[1]->address(), "127.0.0.1:1");
  EXPECT_EQ((*slots)[2]->address(), "127.0.0.1:3");
  EXPECT_EQ(*reg.Register(req(1, 11)), 1);  // heartbeat: nothing changes
  EXPECT_TRUE(rebinds.empty());
  EXPECT_EQ(*reg.Register(req(4, 40)), 0);  // a new worker takes the first slot that is down
  EXPECT_EQ((*slots)[0]->address(), "127.0.0.1:4");
  EXPECT_EQ(*reg.Register(req(5, 50, 2)), 2);  // its rank's slot, down
  EXPECT_EQ((*slots)[2]->address(), "127.0.0.1:5");
  EXPECT_EQ(*reg.Register(req(1, 12)), 1);  // restarted at the same address
  ASSERT_EQ(rebinds.size(), 3u);
  EXPECT_EQ(rebinds[0], std::make_pair(0, std::string("127.0.0.1:4")));
  EXPECT_EQ(rebinds[1], std::make_pair(2, std::string("127.0.0.1:5")));
  EXPECT_EQ(rebinds[2], std::make_pair(1, std::string("127.0.0.1:1")));
  // A slot link follows its slot.
  auto link = MakeSlotLink((*slots)[0]);
  EXPECT_EQ(link->name(), "127.0.0.1:4");
  (*slots)[0]->Rebind("127.0.0.1:6");
  EXPECT_EQ(link->name(), "127.0.0.1:6");
  EXPECT_FALSE(link->Alive());
}

}  // namespace
}  // namespace rs
