#include "coordinator/metrics.h"

namespace rs {

namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
          7.5, 10.0, 20.0, 40.0, 80.0};
}

}  // namespace

Metrics::Metrics(const std::string& model_name)
    : registry(std::make_shared<prometheus::Registry>()), model_(model_name) {
  using namespace prometheus;
  const Labels m{{"model_name", model_}};
  num_requests_running = &BuildGauge().Name("vllm:num_requests_running")
                              .Help("Requests in the running batch").Register(*registry).Add(m);
  num_requests_waiting = &BuildGauge().Name("vllm:num_requests_waiting")
                              .Help("Requests waiting for admission").Register(*registry).Add(m);
  kv_cache_usage_perc = &BuildGauge().Name("vllm:kv_cache_usage_perc")
                             .Help("Fraction of sequence-state slots in use (0..1)")
                             .Register(*registry).Add(m);
  prompt_tokens_total = &BuildCounter().Name("vllm:prompt_tokens_total")
                             .Help("Prompt tokens processed").Register(*registry).Add(m);
  generation_tokens_total = &BuildCounter().Name("vllm:generation_tokens_total")
                                 .Help("Tokens generated").Register(*registry).Add(m);
  time_to_first_token = &BuildHistogram().Name("vllm:time_to_first_token_seconds")
                             .Help("Time to first token").Register(*registry).Add(m, LatencyBuckets());
  inter_token_latency = &BuildHistogram().Name("vllm:inter_token_latency_seconds")
                             .Help("Time between generated tokens").Register(*registry)
                             .Add(m, LatencyBuckets());
  e2e_request_latency = &BuildHistogram().Name("vllm:e2e_request_latency_seconds")
                             .Help("Request latency, arrival to finish").Register(*registry)
                             .Add(m, LatencyBuckets());
  request_success_family = &BuildCounter().Name("vllm:request_success_total")
                                .Help("Finished requests by finish reason").Register(*registry);
  prefix_cache_queries_total = &BuildCounter().Name("vllm:prefix_cache_queries_total")
                                    .Help("Prompt tokens looked up in the kept-state cache")
                                    .Register(*registry).Add(m);
  prefix_cache_hits_total = &BuildCounter().Name("vllm:prefix_cache_hits_total")
                                 .Help("Prompt tokens served from kept sequence states")
                                 .Register(*registry).Add(m);
  step_seconds_family = &BuildHistogram().Name("rigserve_worker_step_seconds")
                             .Help("Time of one step on a worker").Register(*registry);
  state_slots_used = &BuildGauge().Name("rigserve_state_slots_used")
                          .Help("Sequence-state slots in use (running + kept)").Register(*registry).Add(m);
  state_slots_total = &BuildGauge().Name("rigserve_state_slots_total")
                           .Help("Sequence-state slots").Register(*registry).Add(m);
  state_reuse_hits_total = &BuildCounter().Name("rigserve_deltanet_state_reuse_hits_total")
                                .Help("Requests that resumed a kept DeltaNet/KV state")
                                .Register(*registry).Add(m);
  reasoning_tokens_total = &BuildCounter().Name("rigserve_reasoning_tokens_total")
                                .Help("Generated tokens inside <think>").Register(*registry).Add(m);
  thinking_budget_cutoffs_total = &BuildCounter().Name("rigserve_thinking_budget_cutoffs_total")
                                       .Help("Requests whose reasoning the thinking budget ended")
                                       .Register(*registry).Add(m);
  tool_call_parse_failures_total = &BuildCounter().Name("rigserve_tool_call_parse_failures_total")
                                        .Help("Malformed tool calls returned as content")
                                        .Register(*registry).Add(m);
  requests_failed_total = &BuildCounter().Name("rigserve_requests_failed_total")
                               .Help("Requests failed with an error status").Register(*registry).Add(m);
  model_load_progress = &BuildGauge().Name("rigserve_model_load_progress")
                             .Help("Model load progress (0..1)").Register(*registry).Add(m);
  worker_up_family = &BuildGauge().Name("rigserve_worker_up")
                          .Help("1 when the worker answers, 0 when it is down").Register(*registry);
}

prometheus::Counter& Metrics::request_success(const std::string& reason) {
  return request_success_family->Add({{"model_name", model_}, {"finished_reason", reason}});
}

prometheus::Histogram& Metrics::step_seconds(const std::string& worker) {
  return step_seconds_family->Add({{"worker", worker}}, LatencyBuckets());
}

prometheus::Gauge& Metrics::worker_up(const std::string& worker) {
  return worker_up_family->Add({{"worker", worker}});
}

int Metrics::Serve(const std::string& bind_address) {
  exposer = std::make_unique<prometheus::Exposer>(bind_address);
  exposer->RegisterCollectable(registry);
  auto ports = exposer->GetListeningPorts();
  return ports.empty() ? -1 : ports[0];
}

}  // namespace rs
