// rigserve tokenize / detokenize: the tokenizer on stdin/stdout, from a GGUF's metadata or a
// Hugging Face tokenizer.json.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "coordinator/text/cli.h"
#include "coordinator/text/json.h"
#include "coordinator/text/tokenizer.h"
#include "coordinator/text/tokenizer_vocab.h"
#include "worker/args.h"
#include "worker/gguf.h"

namespace rs::cli {

namespace {

using text::Tokenizer;

// MetadataSource over a GGUF file's metadata (the CLI may open weight files; the coordinator
// proper gets the same values from a worker).
class GgufMetadata : public text::MetadataSource {
 public:
  explicit GgufMetadata(const gguf::File* f) : f_(f) {}

  absl::StatusOr<std::string> GetString(std::string_view key) const override {
    auto v = Find(key, gguf::ValueType::STRING);
    if (!v.ok()) return v.status();
    return (*v)->s;
  }
  absl::StatusOr<int64_t> GetInt(std::string_view key) const override {
    const gguf::Value* v = f_->find(key);
    if (v == nullptr) return NotFound(key);
    if (v->type == gguf::ValueType::BOOL || !v->is_integer()) return WrongType(key, "integer", *v);
    return f_->get_int(key);
  }
  absl::StatusOr<bool> GetBool(std::string_view key) const override {
    auto v = Find(key, gguf::ValueType::BOOL);
    if (!v.ok()) return v.status();
    return (*v)->u != 0;
  }
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const override {
    auto v = Find(key, gguf::ValueType::ARRAY);
    if (!v.ok()) return v.status();
    if ((*v)->elem_type != gguf::ValueType::STRING) return WrongType(key, "array[string]", **v);
    std::vector<std::string> out;
    out.reserve((*v)->array.size());
    for (const auto& e : (*v)->array) out.push_back(e.s);
    return out;
  }
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const override {
    auto v = Find(key, gguf::ValueType::ARRAY);
    if (!v.ok()) return v.status();
    std::vector<int64_t> out;
    out.reserve((*v)->array.size());
    for (const auto& e : (*v)->array) {
      if (!e.is_integer() || e.type == gguf::ValueType::BOOL)
        return WrongType(key, "array of integers", **v);
      bool is_unsigned = e.type == gguf::ValueType::U8 || e.type == gguf::ValueType::U16 ||
                         e.type == gguf::ValueType::U32 || e.type == gguf::ValueType::U64;
      out.push_back(is_unsigned ? static_cast<int64_t>(e.u) : e.i);
    }
    return out;
  }

 private:
  static absl::Status NotFound(std::string_view key) {
    return absl::NotFoundError(absl::StrFormat("metadata key %s is missing", std::string(key)));
  }
  static absl::Status WrongType(std::string_view key, const char* want, const gguf::Value& v) {
    std::string got = gguf::value_type_name(v.type);
    if (v.type == gguf::ValueType::ARRAY)
      got = absl::StrFormat("array[%s]", gguf::value_type_name(v.elem_type));
    return absl::InvalidArgumentError(absl::StrFormat("metadata key %s: expected %s, found %s",
                                                      std::string(key), want, got));
  }
  absl::StatusOr<const gguf::Value*> Find(std::string_view key, gguf::ValueType want) const {
    const gguf::Value* v = f_->find(key);
    if (v == nullptr) return NotFound(key);
    if (v->type != want) return WrongType(key, gguf::value_type_name(want), *v);
    return v;
  }
  const gguf::File* f_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrFormat("cannot open %s", path));
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  bool err = std::ferror(f);
  std::fclose(f);
  if (err) return absl::DataLossError(absl::StrFormat("error reading %s", path));
  return data;
}

std::string ReadStdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  return data;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const Args& a) {
  bool has_model = a.has("model"), has_json = a.has("tokenizer-json");
  if (has_model == has_json)
    return absl::InvalidArgumentError("give exactly one of --model and --tokenizer-json");
  if (has_json) {
    auto text = ReadFile(a.get("tokenizer-json"));
    if (!text.ok()) return text.status();
    return Tokenizer::FromTokenizerJson(*text);
  }
  auto file = gguf::File::Open(a.get("model"));
  if (!file.ok()) return file.status();
  GgufMetadata md(file->get());
  auto vocab = text::VocabFromMetadata(md);
  if (!vocab.ok()) return vocab.status();
  return Tokenizer::FromVocab(*std::move(vocab));
}

// Parses token ids separated by whitespace, commas or brackets (so a JSON array works too).
absl::StatusOr<std::vector<int32_t>> ParseIds(std::string_view s, size_t line_no) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == '[' || c == ']') {
      ++i;
      continue;
    }
    size_t j = i;
    if (s[j] == '-') ++j;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    std::string tok(s.substr(i, (j > i ? j : i + 1) - i));
    if (j == i || (j == i + 1 && s[i] == '-') ||
        (j < s.size() && !(s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r' ||
                           s[j] == ',' || s[j] == ']'))) {
      return absl::InvalidArgumentError(
          absl::StrFormat("line %d: '%s' is not a token id", line_no, tok));
    }
    long long v = std::stoll(tok);
    if (v < INT32_MIN || v > INT32_MAX)
      return absl::InvalidArgumentError(absl::StrFormat("line %d: id %s out of range", line_no, tok));
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

int Fail(const char* cmd, const absl::Status& s) {
  std::fprintf(stderr, "rigserve %s: %s\n", cmd, std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int tokenize_main(int argc, char** argv) {
  Args a("tokenize",
         "Reads UTF-8 text on stdin and prints its token ids, space-separated, on one line.\n"
         "Invalid UTF-8 is replaced by U+FFFD first; no BOS is added.");
  a.opt("model", "GGUF file whose tokenizer.ggml.* metadata to use")
      .opt("tokenizer-json", "Hugging Face tokenizer.json to use instead")
      .flag("no-special",
            "tokenise control tokens such as <|im_start|> literally (user-defined added tokens "
            "are still matched, as in HF and llama.cpp)");
  if (!a.parse(argc, argv)) return parse_exit(a);
  auto tok = LoadTokenizer(a);
  if (!tok.ok()) return Fail("tokenize", tok.status());
  std::string input = ReadStdin();
  text::EncodeOptions opts;
  opts.parse_special = !a.has("no-special");
  std::vector<int32_t> ids = (*tok)->Encode(input, opts);
  std::string out;
  out.reserve(ids.size() * 7);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out.push_back(' ');
    out += std::to_string(ids[i]);
  }
  out.push_back('\n');
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

int detokenize_main(int argc, char** argv) {
  Args a("detokenize",
         "Reads token ids (separated by spaces, commas or newlines; a JSON array works) on stdin\n"
         "and prints the text exactly, with no newline added. Invalid UTF-8 in the decoded\n"
         "bytes is replaced by U+FFFD.");
  a.opt("model", "GGUF file whose tokenizer.ggml.* metadata to use")
      .opt("tokenizer-json", "Hugging Face tokenizer.json to use instead")
      .flag("skip-special", "drop control tokens (<|im_end|>, ...) from the output")
      .flag("lines",
            "decode each input line separately and print one JSON string per line "
            "(ASCII-only escapes)");
  if (!a.parse(argc, argv)) return parse_exit(a);
  auto tok = LoadTokenizer(a);
  if (!tok.ok()) return Fail("detokenize", tok.status());
  std::string input = ReadStdin();
  bool skip = a.has("skip-special");
  std::string out;
  if (a.has("lines")) {
    size_t start = 0, line_no = 1;
    while (start < input.size()) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      auto ids = ParseIds(std::string_view(input).substr(start, end - start), line_no);
      if (!ids.ok()) return Fail("detokenize", ids.status());
      auto txt = (*tok)->Decode(*ids, skip);
      if (!txt.ok()) return Fail("detokenize", txt.status());
      json::AppendQuoted(&out, *txt, /*ensure_ascii=*/true);
      out.push_back('\n');
      start = end + 1;
      ++line_no;
    }
  } else {
    auto ids = ParseIds(input, 1);
    if (!ids.ok()) return Fail("detokenize", ids.status());
    auto txt = (*tok)->Decode(*ids, skip);
    if (!txt.ok()) return Fail("detokenize", txt.status());
    out = *std::move(txt);
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace rs::cli
