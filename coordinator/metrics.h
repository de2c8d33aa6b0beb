// Prometheus metrics of the coordinator: the vLLM-compatible names (so existing dashboards
// work) and rigserve_* metrics no other server exports. Served by prometheus-cpp's exposer on
// its own thread (--metrics-port).
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace rs {

struct Metrics {
  explicit Metrics(const std::string& model_name);
  // Starts the HTTP exposer on host:port (port 0 = ephemeral); returns the bound port.
  int Serve(const std::string& bind_address);

  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<prometheus::Exposer> exposer;

  prometheus::Gauge* num_requests_running;
  prometheus::Gauge* num_requests_waiting;
  prometheus::Gauge* kv_cache_usage_perc;
  prometheus::Counter* prompt_tokens_total;
  prometheus::Counter* generation_tokens_total;
  prometheus::Histogram* time_to_first_token;
  prometheus::Histogram* inter_token_latency;
  prometheus::Histogram* e2e_request_latency;
  prometheus::Family<prometheus::Counter>* request_success_family;
  prometheus::Counter* prefix_cache_queries_total;
  prometheus::Counter* prefix_cache_hits_total;
  prometheus::Counter& request_success(const std::string& finished_reason);

  // rigserve_*.
  prometheus::Family<prometheus::Histogram>* step_seconds_family;
  prometheus::Histogram& step_seconds(const std::string& worker);
  prometheus::Gauge* state_slots_used;
  prometheus::Gauge* state_slots_total;
  prometheus::Counter* state_reuse_hits_total;
  prometheus::Counter* reasoning_tokens_total;
  prometheus::Counter* thinking_budget_cutoffs_total;
  prometheus::Counter* tool_call_parse_failures_total;
  prometheus::Counter* requests_failed_total;
  prometheus::Gauge* model_load_progress;
  prometheus::Family<prometheus::Gauge>* worker_up_family;
  prometheus::Gauge& worker_up(const std::string& worker);

 private:
  std::string model_;
};

}  // namespace rs
