#include "coordinator/text/tokenizer_pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace rs::text {

namespace {
std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof(buf));
  if (n < 0) return absl::StrFormat("PCRE2 error %d", code);
  return std::string(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

// One match data block per thread (pcre2_match_data is not shareable between threads but can
// be reused for any pattern with <= 1 capture pair we ask for).
struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  ~MatchData() { pcre2_match_data_free(md); }
};
}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(std::string_view regex) {
  int err = 0;
  PCRE2_SIZE erroff = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex.data()), regex.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &erroff, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("pre-tokenizer regex does not compile at offset %d: %s (pattern: %s)",
                        erroff, Pcre2Message(err), std::string(regex)));
  }
  std::unique_ptr<PreTokenizer> p(new PreTokenizer());
  p->pattern_ = std::string(regex);
  p->code_ = code;
  p->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return p;
}

PreTokenizer::~PreTokenizer() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  thread_local MatchData tl;
  auto* code = static_cast<pcre2_code*>(code_);
  PCRE2_SPTR subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0, last = 0;
  while (pos < n) {
    int rc;
    if (jit_) {
      rc = pcre2_jit_match(code, subject, n, pos, 0, tl.md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // fall back to the interpreter
        rc = pcre2_match(code, subject, n, pos, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, tl.md,
                         nullptr);
    } else {
      rc = pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, tl.md, nullptr);
    }
    if (rc < 0) break;  // no further match (or a resource limit): rest is one piece
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tl.md);
    size_t ms = ov[0], me = ov[1];
    if (me == ms) {  // empty match: step over one code point
      pos = ms + 1;
      while (pos < n && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (ms > last) pieces->push_back(text.substr(last, ms - last));
    pieces->push_back(text.substr(ms, me - ms));
    last = pos = me;
  }
  if (last < n) pieces->push_back(text.substr(last));
}

}  // namespace rs::text
