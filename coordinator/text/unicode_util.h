// UTF-8 helpers shared by the tokenizer and the text pipeline: validation, replacement of
// invalid sequences with U+FFFD the way the WHATWG Encoding Standard's UTF-8 decoder does it
// (one U+FFFD per "maximal subpart", which is what browsers, Node's TextDecoder and Python's
// bytes.decode(errors="replace") produce), NFC normalisation (utf8proc) and the GPT-2
// byte <-> unicode mapping of byte-level BPE vocabularies.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace rs::text {

// True when `s` is well-formed UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Appends `in` to `out`, replacing every ill-formed subsequence with U+FFFD (EF BF BD).
// With final = false, a truncated but so far valid sequence at the very end is not consumed
// (a streaming decoder keeps it until more bytes arrive). Returns the number of input bytes
// consumed (== in.size() when final).
size_t AppendSanitizedUtf8(std::string_view in, std::string* out, bool final);
std::string SanitizeUtf8(std::string_view in);

// NFC normalisation of valid UTF-8. Text made only of NFC-inert code points (see NfcInert)
// is returned unchanged without running utf8proc's normaliser.
std::string NfcNormalize(std::string_view s);
// The same, always through utf8proc_map (the reference the quick check is tested against).
std::string NfcNormalizeFull(std::string_view s);
// True when NfcNormalize(s) might differ from s: some code point is not NFC-inert.
bool MayNeedNfc(std::string_view s);
// A code point that NFC leaves alone in any context: below U+0300, or a starter (combining
// class 0) without a canonical decomposition that can never be the second of a composition
// pair (utf8proc's tables; Hangul jamo excluded because they compose algorithmically).
bool NfcInert(uint32_t cp);

// Appends the UTF-8 encoding of code point `cp` (must be a scalar value).
void AppendCodepoint(std::string* out, uint32_t cp);

// Decodes the code point at s[*pos] of valid UTF-8 and advances *pos.
uint32_t NextCodepoint(std::string_view s, size_t* pos);

// GPT-2's bytes_to_unicode(): the 188 printable bytes ('!'..'~', U+00A1..U+00AC,
// U+00AE..U+00FF) map to themselves, the other 68 to U+0100 + n in byte order.
struct ByteUnicodeMap {
  std::array<uint16_t, 256> byte_to_cp;  // byte -> code point
  std::array<std::string, 256> byte_to_utf8;  // byte -> that code point as UTF-8
  // code point -> byte, or -1 when the code point is not in the map (cp < 0x144)
  std::array<int16_t, 0x144> cp_to_byte;
};
const ByteUnicodeMap& GetByteUnicodeMap();

// Maps raw bytes to their byte-level spelling ("Hello world" -> "HelloĠworld").
std::string BytesToUnicode(std::string_view bytes);
// The inverse; false when some code point is not in the map (then *out is unspecified).
bool UnicodeToBytes(std::string_view spelled, std::string* out);

}  // namespace rs::text
