#include "worker/vocab_gen.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rs {
namespace {

// The training text: written for this file (plain English about serving models, a little C++ and
// Python, a chat transcript). Its only job is to give BPE common English and code fragments.
constexpr const char* kTrainingText = R"TXT(
The server reads a model file, maps the weights into memory and waits for requests.
When a request arrives, the text is split into tokens, the tokens are turned into vectors,
and every layer of the network updates those vectors in turn. The last layer produces one
score for each token in the vocabulary, and the next token is chosen from those scores.
Then the new token is added to the sequence and the whole step runs again, until the model
writes the end of the answer or the request reaches its limit.

Most of the time is spent reading weights. A model with thirty billion parameters stored in
four bits needs about fifteen gigabytes, and a decoder reads all of the active weights for
every token it writes. That is why the speed of memory, not the speed of arithmetic, sets the
pace. Batching many requests together helps, because the same weights are read once and used
for every sequence in the batch.

The attention layers keep a cache of keys and values for the tokens they have seen. The other
layers keep a small recurrent state instead, so their cost does not grow with the length of
the context. This is what makes long conversations cheap: three of every four layers have a
state of fixed size, and only the remaining layers need the cache.

Question: what is the capital of France?
Answer: The capital of France is Paris. It is also the largest city in the country.

Question: how many days are there in a week?
Answer: There are seven days in a week.

User: Please write a function that returns the sum of a list of numbers.
Assistant: Here is a short function in Python that does this.

def total(values):
    result = 0
    for value in values:
        result += value
    return result

print(total([1, 2, 3, 4, 5]))

And here is the same idea in C++, using a standard algorithm from the library:

#include <numeric>
#include <vector>

int total(const std::vector<int>& values) {
  return std::accumulate(values.begin(), values.end(), 0);
}

int main() {
  std::vector<int> values = {1, 2, 3, 4, 5};
  return total(values) == 15 ? 0 : 1;
}

class Request:
    def __init__(self, prompt, max_tokens=128, temperature=0.7):
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.tokens = []

    def is_finished(self):
        return len(self.tokens) >= self.max_tokens

for (int i = 0; i < n; ++i) {
  if (scores[i] > best) {
    best = scores[i];
    index = i;
  }
}

It's a good idea to test the code you write. We'll check that the results are correct, that
the errors are reported clearly, and that the program doesn't crash when the input is wrong.
If a file is truncated, the reader should say where it stopped and what it expected to find.
They've said that the new version is faster, and I'd like to see the numbers for myself.

The weather today is cold and wet, with rain in the morning and some sun in the afternoon.
People are walking to work, children are going to school, and the shops are opening their
doors. In the evening the city is quiet again, and the lights come on one by one.

A good answer is short, clear and correct. A long answer that is wrong is worse than a short
answer that says it does not know. When the question is about code, show the code; when the
question is about an idea, explain the idea with an example.

struct Config {
  int hidden_size = 1024;
  int num_layers = 16;
  float rms_norm_eps = 1e-6f;
};

def softmax(x):
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]

The model is loaded, the cache is allocated, and the server is ready to accept connections.
Each connection sends a message, the message is tokenized, and the tokens are scheduled.
The scheduler decides which sequences run in the next step and how many tokens each may add.
)TXT";

bool IsAsciiLetter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsNewline(unsigned char c) { return c == '\n' || c == '\r'; }
bool IsSpace(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
// Letters for the regex: ASCII letters, and every byte >= 0x80 (part of a non-ASCII character;
// the built-in text has none, this only keeps the splitter total).
bool IsLetter(unsigned char c) { return IsAsciiLetter(c) || c >= 0x80; }
bool IsPunct(unsigned char c) { return !IsSpace(c) && !IsLetter(c) && !IsDigit(c); }

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Length of a contraction ('s 't 're 've 'm 'll 'd, any case) at position i, or 0.
size_t Contraction(const std::string& s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  const char a = Lower(s[i + 1]);
  const char b = i + 2 < s.size() ? Lower(s[i + 2]) : '\0';
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// Plain BPE over the pre-split training text: n_merges times, merge the most frequent adjacent
// pair (seen at least twice; ties: the smallest (left, right)).
std::vector<std::string> LearnMerges(int n_merges, const std::string (&byte_text)[256]) {
  std::vector<std::string> merges;
  // Words of the training text as symbol sequences, with their counts (std::map: fixed order).
  std::map<std::string, int64_t> word_counts;
  for (const auto& w : PreSplitAscii(kTrainingText)) ++word_counts[w];
  struct Word {
    std::vector<std::string> syms;
    int64_t count;
  };
  std::vector<Word> words;
  for (const auto& [w, count] : word_counts) {
    Word word{{}, count};
    for (unsigned char c : w) word.syms.push_back(byte_text[c]);
    words.push_back(std::move(word));
  }

  for (int m = 0; m < n_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& w : words)
      for (size_t i = 0; i + 1 < w.syms.size(); ++i) pairs[{w.syms[i], w.syms[i + 1]}] += w.count;
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;  // a merge must be seen at least twice
    for (const auto& [pair, count] : pairs) {
      // std::map iterates in (left, right) order, so the first maximum is the tie winner.
      if (count > best_count) {
        best = &pair;
        best_count = count;
      }
    }
    if (!best) break;
    const std::string left = best->first, right = best->second, joined = left + right;
    merges.push_back(left + " " + right);
    for (auto& w : words) {
      std::vector<std::string> out;
      out.reserve(w.syms.size());
      for (size_t i = 0; i < w.syms.size(); ++i) {
        if (i + 1 < w.syms.size() && w.syms[i] == left && w.syms[i + 1] == right) {
          out.push_back(joined);
          ++i;
        } else {
          out.push_back(w.syms[i]);
        }
      }
      w.syms = std::move(out);
    }
  }

  return merges;
}

}  // namespace

std::vector<std::string> PreSplitAscii(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = s[i];
    size_t j = i;
    if (size_t k = Contraction(s, i)) {
      j = i + k;
    } else if (IsLetter(c) ||
               (!IsNewline(c) && !IsLetter(c) && !IsDigit(c) && i + 1 < n &&
                IsLetter(static_cast<unsigned char>(s[i + 1])))) {
      // [^\r\n\p{L}\p{N}]?\p{L}+
      j = IsLetter(c) ? i : i + 1;
      while (j < n && IsLetter(static_cast<unsigned char>(s[j]))) ++j;
    } else if (IsDigit(c)) {
      j = i + 1;  // \p{N}: one digit per token
    } else if (IsPunct(c) ||
               (c == ' ' && i + 1 < n && IsPunct(static_cast<unsigned char>(s[i + 1])))) {
      //  ?[^\s\p{L}\p{N}]+[\r\n]*
      j = c == ' ' ? i + 1 : i;
      while (j < n && IsPunct(static_cast<unsigned char>(s[j]))) ++j;
      while (j < n && IsNewline(static_cast<unsigned char>(s[j]))) ++j;
    } else {
      // Whitespace run [i, e).
      size_t e = i;
      while (e < n && IsSpace(static_cast<unsigned char>(s[e]))) ++e;
      size_t last_nl = std::string::npos;
      for (size_t k = i; k < e; ++k)
        if (IsNewline(static_cast<unsigned char>(s[k]))) last_nl = k;
      if (last_nl != std::string::npos) {
        j = last_nl + 1;  // \s*[\r\n]+
      } else if (e < n && e - i > 1) {
        j = e - 1;        // \s+(?!\S): leave the last space for the next word
      } else {
        j = e;            // \s+
      }
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

const std::vector<std::string>& Qwen35SpecialTokens() {
  static const std::vector<std::string>* t = new std::vector<std::string>{
      "<|endoftext|>",  "<|im_start|>",       "<|im_end|>",       "<|object_ref_start|>",
      "<|object_ref_end|>", "<|box_start|>",  "<|box_end|>",      "<|quad_start|>",
      "<|quad_end|>",   "<|vision_start|>",   "<|vision_end|>",   "<|vision_pad|>",
      "<|image_pad|>",  "<|video_pad|>",      "<tool_call>",      "</tool_call>",
      "<|fim_prefix|>", "<|fim_middle|>",     "<|fim_suffix|>",   "<|fim_pad|>",
      "<|repo_name|>",  "<|file_sep|>",       "<tool_response>",  "</tool_response>",
      "<think>",        "</think>"};
  return *t;
}

const std::vector<uint8_t>& ByteTokenOrder() {
  static const std::vector<uint8_t>* order = [] {
    auto* v = new std::vector<uint8_t>;
    std::vector<bool> seen(256, false);
    auto add_range = [&](int lo, int hi) {
      for (int b = lo; b <= hi; ++b) {
        v->push_back(static_cast<uint8_t>(b));
        seen[b] = true;
      }
    };
    add_range('!', '~');
    add_range(0xA1, 0xAC);
    add_range(0xAE, 0xFF);
    for (int b = 0; b < 256; ++b)
      if (!seen[b]) v->push_back(static_cast<uint8_t>(b));
    return v;
  }();
  return *order;
}

std::string ByteToUnicode(uint8_t b) {
  // Printable bytes map to themselves; the others, in byte order, to U+0100, U+0101, ...
  uint32_t cp;
  if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) {
    cp = b;
  } else {
    uint32_t k = 0;
    for (uint32_t x = 0; x < b; ++x) {
      const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
      if (!printable) ++k;
    }
    cp = 256 + k;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {  // cp < 0x800 always here
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

absl::StatusOr<GeneratedVocab> GenerateVocab(int64_t vocab_size, int n_merges) {
  const auto& specials = Qwen35SpecialTokens();
  const int64_t needed = 256 + static_cast<int64_t>(std::max(n_merges, 0)) +
                         static_cast<int64_t>(specials.size());
  if (n_merges < 0 || vocab_size < needed)
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab size ", vocab_size, " cannot hold 256 byte tokens + ", n_merges, " merges + ",
        specials.size(), " special tokens (needs at least ", needed, ")"));

  GeneratedVocab v;
  std::string byte_text[256];
  for (int b = 0; b < 256; ++b) byte_text[b] = ByteToUnicode(static_cast<uint8_t>(b));
  for (uint8_t b : ByteTokenOrder()) {
    v.tokens.push_back(byte_text[b]);
    v.types.push_back(kTokenNormal);
  }
  std::unordered_set<std::string> known(v.tokens.begin(), v.tokens.end());

  // Training is deterministic and takes a noticeable fraction of a second: learn once per
  // process and n_merges.
  static std::mutex mu;
  static std::map<int, std::vector<std::string>>* cache =
      new std::map<int, std::vector<std::string>>;
  std::vector<std::string> merges;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(n_merges);
    if (it == cache->end()) it = cache->emplace(n_merges, LearnMerges(n_merges, byte_text)).first;
    merges = it->second;
  }
  for (const auto& m : merges) {
    const size_t sp = m.find(' ');
    std::string joined = m.substr(0, sp) + m.substr(sp + 1);
    v.merges.push_back(m);
    if (known.insert(joined).second) {
      v.tokens.push_back(std::move(joined));
      v.types.push_back(kTokenNormal);
    }
  }

  v.first_special = static_cast<int32_t>(v.tokens.size());
  for (const auto& s : specials) {
    v.tokens.push_back(s);
    v.types.push_back(kTokenControl);
  }
  auto id_of = [&](std::string_view s) {
    for (size_t i = 0; i < specials.size(); ++i)
      if (specials[i] == s) return v.first_special + static_cast<int32_t>(i);
    return -1;
  };
  v.bos_id = id_of("<|endoftext|>");
  v.eos_id = id_of("<|im_end|>");
  v.pad_id = id_of("<|vision_pad|>");
  while (static_cast<int64_t>(v.tokens.size()) < vocab_size) {
    v.tokens.push_back(absl::StrCat("[PAD", v.tokens.size(), "]"));
    v.types.push_back(kTokenUnused);
  }
  return v;
}

}  // namespace rs
