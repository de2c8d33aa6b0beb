#include "coordinator/inference_service.h"

#include <grpcpp/grpcpp.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "coordinator/text/json.h"

namespace rs {

namespace pb = rigserve::v1;

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

namespace {

// Public sampling fields -> engine parameters, with range checks naming the field.
absl::StatusOr<RequestParams> ToParams(const pb::SamplingParams& s) {
  RequestParams p;
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError("sampling." + m); };
  p.sampling.temperature = s.has_temperature() ? s.temperature() : 1.0f;
  if (!(p.sampling.temperature >= 0)) return bad(absl::StrCat("temperature must be >= 0, got ", s.temperature()));
  p.sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  if (!(p.sampling.top_p > 0 && p.sampling.top_p <= 1)) return bad(absl::StrCat("top_p must be in (0, 1], got ", s.top_p()));
  p.sampling.top_k = s.has_top_k() ? s.top_k() : 0;
  if (p.sampling.top_k < -1) return bad(absl::StrCat("top_k must be -1, 0 or positive, got ", s.top_k()));
  if (p.sampling.top_k < 0) p.sampling.top_k = 0;
  p.sampling.min_p = s.has_min_p() ? s.min_p() : 0.0f;
  if (!(p.sampling.min_p >= 0 && p.sampling.min_p <= 1)) return bad(absl::StrCat("min_p must be in [0, 1], got ", s.min_p()));
  p.sampling.presence_penalty = s.presence_penalty();
  if (!(p.sampling.presence_penalty >= -2 && p.sampling.presence_penalty <= 2)) return bad(absl::StrCat("presence_penalty must be in [-2, 2], got ", s.presence_penalty()));
  p.sampling.frequency_penalty = s.frequency_penalty();
  if (!(p.sampling.frequency_penalty >= -2 && p.sampling.frequency_penalty <= 2)) return bad(absl::StrCat("frequency_penalty must be in [-2, 2], got ", s.frequency_penalty()));
  p.sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  if (!(p.sampling.repetition_penalty > 0)) return bad(absl::StrCat("repetition_penalty must be > 0, got ", s.repetition_penalty()));
  for (const auto& [tok, bias] : s.logit_bias()) p.sampling.logit_bias.push_back({tok, bias});
  p.sampling.seed = s.has_seed() ? s.seed() : static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
  if (s.has_logprobs()) {
    if (s.logprobs() < 0 || s.logprobs() > 20) return bad(absl::StrCat("logprobs must be in [0, 20], got ", s.logprobs()));
    p.sampling.top_logprobs = s.logprobs();
  }
  if (s.has_max_tokens()) {
    if (s.max_tokens() < 1) return bad(absl::StrCat("max_tokens must be >= 1, got ", s.max_tokens()));
    p.max_tokens = s.max_tokens();
  }
  p.min_tokens = s.min_tokens();
  if (p.min_tokens < 0) return bad("min_tokens must be >= 0");
  p.stop.assign(s.stop().begin(), s.stop().end());
  p.stop_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.ignore_eos = s.ignore_eos();
  p.skip_special = s.has_skip_special_tokens() ? s.skip_special_tokens() : true;
  return p;
}

void FillUsage(const OutputChunk& c, pb::Usage* u) {
  u->set_prompt_tokens(c.prompt_tokens);
  u->set_completion_tokens(c.completion_tokens);
  u->set_cached_tokens(c.cached_tokens);
  u->set_reasoning_tokens(c.reasoning_tokens);
}

// Waits for the request's chunks, cancelling it when the client goes away.
template <typename Fn>
grpc::Status Pump(grpc::ServerContext* ctx, Engine* engine, Request& r, Fn&& write) {
  while (true) {
    auto c = r.Next(100);
    if (ctx->IsCancelled()) {
      r.Cancel();
      engine->Abort(r.id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (!c) continue;
    if (!c->error.ok()) return ToGrpc(c->error);
    if (!write(*c)) {
      r.Cancel();
      engine->Abort(r.id());
      return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (c->finished) return grpc::Status::OK;
  }
}

}  // namespace

grpc::Status InferenceServiceImpl::NotReady() const {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading");
}

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                                            grpc::ServerWriter<pb::GenerateResponse>* writer) {
  if (!engine_) return NotReady();
  auto params = ToParams(req->sampling());
  if (!params.ok()) return ToGrpc(params.status());
  if (req->has_deadline_seconds()) params->deadline_s = req->deadline_seconds();
  std::vector<int32_t> prompt;
  if (req->has_token_ids()) {
    prompt.assign(req->token_ids().ids().begin(), req->token_ids().ids().end());
  } else if (req->has_text()) {
    text::EncodeOptions eo;
    eo.parse_special = false;
    prompt = engine_.load()->tokenizer().Encode(req->text(), eo);
  } else {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "input: give text or token_ids");
  }
  auto r = engine_.load()->SubmitGenerate(req->request_id(), std::move(prompt), std::move(*params));
  if (!r.ok()) return ToGrpc(r.status());
  const std::string id = (*r)->id();
  return Pump(ctx, engine_.load(), **r, [&](const OutputChunk& c) {
    pb::GenerateResponse m;
    m.set_request_id(id);
    for (const auto& t : c.tokens) {
      m.add_token_ids(t.id);
      if (req->sampling().has_logprobs()) {
        auto* lp = m.add_logprobs();
        lp->set_token_id(t.id);
        lp->set_logprob(t.logprob);
        for (const auto& x : t.top) {
          auto* tp = lp->add_top();
          tp->set_token_id(x.token);
          tp->set_logprob(x.logprob);
        }
      }
    }
    m.set_text(c.text);
    FillUsage(c, m.mutable_usage());
    if (c.finished) {
      m.set_finish_reason(c.finish_reason);
      if (!c.stop_reason.empty()) m.set_stop_reason(c.stop_reason);
    }
    return writer->Write(m);
  });
}

grpc::Status InferenceServiceImpl::Chat(grpc::ServerContext* ctx, const pb::ChatRequest* req,
                                        grpc::ServerWriter<pb::ChatResponse>* writer) {
  if (!engine_) return NotReady();
  auto params = ToParams(req->sampling());
  if (!params.ok()) return ToGrpc(params.status());
  if (req->has_deadline_seconds()) params->deadline_s = req->deadline_seconds();
  if (req->messages_size() == 0)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "messages: at least one message is required");
  // Messages -> OpenAI-format JSON for the template.
  json::Json msgs = json::Json::Array();
  for (int i = 0; i < req->messages_size(); ++i) {
    const auto& m = req->messages(i);
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" && m.role() != "tool")
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("messages[", i, "].role: '", m.role(), "' is not system, user, assistant or tool"));
    json::Json o = json::Json::Object();
    o.set("role", json::Json(m.role()));
    o.set("content", json::Json(m.content()));
    if (!m.reasoning_content().empty()) o.set("reasoning_content", json::Json(m.reasoning_content()));
    if (m.tool_calls_size()) {
      json::Json calls = json::Json::Array();
      for (int j = 0; j < m.tool_calls_size(); ++j) {
        const auto& tc = m.tool_calls(j);
        auto args = json::Parse(tc.arguments().empty() ? "{}" : tc.arguments());
        if (!args.ok())
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("messages[", i, "].tool_calls[", j, "].arguments: not JSON: ", args.status().message()));
        json::Json fn = json::Json::Object();
        fn.set("name", json::Json(tc.name()));
        fn.set("arguments", std::move(*args));
        json::Json call = json::Json::Object();
        if (!tc.id().empty()) call.set("id", json::Json(tc.id()));
        call.set("type", json::Json("function"));
        call.set("function", std::move(fn));
        calls.push_back(std::move(call));
      }
      o.set("tool_calls", std::move(calls));
    }
    if (!m.tool_call_id().empty()) o.set("tool_call_id", json::Json(m.tool_call_id()));
    if (!m.name().empty()) o.set("name", json::Json(m.name()));
    msgs.push_back(std::move(o));
  }
  ChatOptions chat;
  chat.messages_json = json::DumpCompact(msgs);
  if (!req->tools_json().empty()) {
    auto t = json::Parse(req->tools_json());
    if (!t.ok() || !t->is_array())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("tools_json: not a JSON array",
                                       t.ok() ? "" : absl::StrCat(": ", t.status().message())));
    chat.tools_json = req->tools_json();
  }
  chat.kwargs_json = req->chat_template_kwargs_json();
  if (req->has_thinking_budget()) chat.thinking_budget = req->thinking_budget();
  auto r = engine_.load()->SubmitChat(req->request_id(), chat, std::move(*params));
  if (!r.ok()) return ToGrpc(r.status());
  const std::string id = (*r)->id();
  return Pump(ctx, engine_.load(), **r, [&](const OutputChunk& c) {
    // One message per event; token ids and usage ride on the first (or on an empty message).
    bool first = true;
    auto base = [&]() {
      pb::ChatResponse m;
      m.set_request_id(id);
      if (first) {
        for (const auto& t : c.tokens) m.add_token_ids(t.id);
        FillUsage(c, m.mutable_usage());
        first = false;
      }
      return m;
    };
    for (const auto& e : c.events) {
      pb::ChatResponse m = base();
      switch (e.kind) {
        case OutputEvent::Kind::kReasoning: m.set_reasoning(e.text); break;
        case OutputEvent::Kind::kContent:
          m.set_content(e.text);
          m.set_tool_call_parse_failed(e.parse_failed);
          break;
        case OutputEvent::Kind::kToolCall: {
          auto* tc = m.mutable_tool_call();
          tc->set_id(e.call.id);
          tc->set_name(e.call.name);
          tc->set_arguments(e.call.arguments);
          break;
        }
      }
      if (!writer->Write(m)) return false;
    }
    if (c.finished || first) {
      pb::ChatResponse m = base();
      FillUsage(c, m.mutable_usage());
      if (c.finished) m.set_finish_reason(c.finish_reason);
      if (!writer->Write(m)) return false;
    }
    return true;
  });
}

grpc::Status InferenceServiceImpl::Abort(grpc::ServerContext*, const pb::AbortRequest* req,
                                         pb::AbortResponse* resp) {
  if (!engine_) return NotReady();
  resp->set_found(engine_.load()->Abort(req->request_id()));
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext*, const pb::TokenizeRequest* req,
                                            pb::TokenizeResponse* resp) {
  if (!engine_) return NotReady();
  text::EncodeOptions eo;
  eo.parse_special = req->parse_special();
  for (int32_t id : engine_.load()->tokenizer().Encode(req->text(), eo)) resp->add_ids(id);
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ModelInfo(grpc::ServerContext*, const pb::ModelInfoRequest*,
                                             pb::ModelInfoResponse* resp) {
  if (!engine_) return NotReady();
  const auto& m = engine_.load()->model();
  resp->set_architecture(m.architecture());
  resp->set_name(m.name());
  resp->set_n_vocab(m.n_vocab());
  resp->set_context_length(engine_.load()->max_context());
  resp->set_n_layer(m.n_layer());
  resp->set_n_embd(m.n_embd());
  resp->set_n_expert(m.n_expert());
  resp->set_n_expert_used(m.n_expert_used());
  for (int32_t id : engine_.load()->eog_ids()) resp->add_eos_token_ids(id);
  resp->set_chat_template(m.chat_template());
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ServerInfo(grpc::ServerContext*, const pb::ServerInfoRequest*,
                                              pb::ServerInfoResponse* resp) {
  if (!engine_) return NotReady();
  EngineInfo i = engine_.load()->Info();
  resp->set_running_requests(i.running);
  resp->set_waiting_requests(i.waiting);
  resp->set_uptime_seconds(i.uptime_s);
  resp->set_workers_total(i.workers);
  resp->set_workers_up(i.workers_up);
  resp->set_state_slots_used(i.running + i.kept);
  resp->set_state_slots_total(i.slots_total);
  resp->set_version("0.1.0");
  return grpc::Status::OK;
}

}  // namespace rs
