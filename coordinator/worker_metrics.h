// Prometheus metrics of a worker process (`rigserve worker --metrics-port`): its steps, the
// tokens it ran, its sequence states, its model. The coordinator's own metrics (coordinator/
// metrics.h) describe requests; these describe one worker, so a dashboard can tell a slow or
// idle worker from a slow pipeline.
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/service/worker_service.h"

namespace rs {

struct WorkerMetrics {
  // `device`: "cpu" or "cuda:N"; `model`: the file or synthetic spec (labels of rigserve_worker_info).
  WorkerMetrics(const std::string& device, const std::string& model);
  // Starts the HTTP exposer on host:port (port 0 = any free port); returns the bound port.
  int Serve(const std::string& bind_address);
  // Records one executed step (the WorkerServiceImpl step observer).
  void Observe(const WorkerStepStats& s);

  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<prometheus::Exposer> exposer;
  prometheus::Histogram* step_seconds;
  prometheus::Counter* steps_total;
  prometheus::Counter* step_errors_total;
  prometheus::Counter* tokens_total;
  prometheus::Counter* sampled_tokens_total;
  prometheus::Gauge* states_running;
  prometheus::Gauge* states_kept;
};

}  // namespace rs
