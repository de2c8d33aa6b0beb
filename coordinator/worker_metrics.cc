#include "coordinator/worker_metrics.h"

#include "prometheus/family.h"

namespace rs {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

WorkerMetrics::WorkerMetrics(const std::string& device, const std::string& model)
    : registry(std::make_shared<prometheus::Registry>()) {
  BuildGauge().Name("rigserve_worker_info").Help("Always 1; labels: the worker's device and model")
      .Register(*registry).Add({{"device", device}, {"model", model}}).Set(1);
  step_seconds = &BuildHistogram().Name("rigserve_worker_step_seconds")
                      .Help("Time this worker spent executing one step plan")
                      .Register(*registry)
                      .Add({}, prometheus::Histogram::BucketBoundaries{
                                   0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                   2.5, 5, 10});
  steps_total = &BuildCounter().Name("rigserve_worker_steps_total")
                     .Help("Step plans executed").Register(*registry).Add({});
  step_errors_total = &BuildCounter().Name("rigserve_worker_step_errors_total")
                           .Help("Step plans that failed").Register(*registry).Add({});
  tokens_total = &BuildCounter().Name("rigserve_worker_tokens_total")
                      .Help("Tokens run through the model (prefill and decode)")
                      .Register(*registry).Add({});
  sampled_tokens_total = &BuildCounter().Name("rigserve_worker_sampled_tokens_total")
                              .Help("Tokens this worker sampled (the last pipeline stage)")
                              .Register(*registry).Add({});
  states_running = &BuildGauge().Name("rigserve_worker_states_running")
                        .Help("Sequence states of running requests").Register(*registry).Add({});
  states_kept = &BuildGauge().Name("rigserve_worker_states_kept")
                     .Help("Kept sequence states (prefix reuse)").Register(*registry).Add({});
}

int WorkerMetrics::Serve(const std::string& bind_address) {
  exposer = std::make_unique<prometheus::Exposer>(bind_address);
  exposer->RegisterCollectable(registry);
  auto ports = exposer->GetListeningPorts();
  return ports.empty() ? -1 : ports[0];
}

void WorkerMetrics::Observe(const WorkerStepStats& s) {
  step_seconds->Observe(s.seconds);
  steps_total->Increment();
  if (!s.ok) step_errors_total->Increment();
  tokens_total->Increment(static_cast<double>(s.tokens));
  sampled_tokens_total->Increment(static_cast<double>(s.sampled));
  states_running->Set(static_cast<double>(s.running));
  states_kept->Set(static_cast<double>(s.kept));
}

}  // namespace rs
