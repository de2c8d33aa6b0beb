#include "coordinator/text/unicode_util.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <utf8proc.h>

namespace rs::text {

namespace {

// For a lead byte: number of continuation bytes and the allowed range of the first one.
// Returns false for bytes that can never start a sequence (80..C1, F5..FF).
inline bool LeadInfo(unsigned char c, int* need, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    *need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    *need = 2;
    if (c == 0xE0) *lo = 0xA0;
    if (c == 0xED) *hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    *need = 3;
    if (c == 0xF0) *lo = 0x90;
    if (c == 0xF4) *hi = 0x8F;  // <= U+10FFFF
  } else {
    return false;
  }
  return true;
}

constexpr char kReplacement[] = "\xEF\xBF\xBD";

}  // namespace

bool IsValidUtf8(std::string_view s) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int need;
    unsigned char lo, hi;
    if (!LeadInfo(c, &need, &lo, &hi)) return false;
    if (i + need >= n) return false;  // truncated
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (int k = 2; k <= need; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return false;
    i += need + 1;
  }
  return true;
}

size_t AppendSanitizedUtf8(std::string_view in, std::string* out, bool final) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(in.data());
  size_t n = in.size(), i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      size_t j = i + 1;
      while (j < n && p[j] < 0x80) ++j;
      out->append(in.data() + i, j - i);
      i = j;
      continue;
    }
    int need;
    unsigned char lo, hi;
    if (!LeadInfo(c, &need, &lo, &hi)) {
      out->append(kReplacement);
      ++i;
      continue;
    }
    int k = 1;  // continuation bytes accepted so far + 1
    bool bad = false;
    while (k <= need) {
      if (i + k >= n) break;
      unsigned char b = p[i + k];
      unsigned char l = (k == 1) ? lo : 0x80, h = (k == 1) ? hi : 0xBF;
      if (b < l || b > h) {
        bad = true;
        break;
      }
      ++k;
    }
    if (!bad && k == need + 1) {
      out->append(in.data() + i, need + 1);
      i += need + 1;
    } else if (!bad) {  // ran out of input inside a valid prefix
      if (!final) return i;
      out->append(kReplacement);
      return n;
    } else {  // the byte at i + k does not continue the sequence: it starts afresh
      out->append(kReplacement);
      i += k;
    }
  }
  return n;
}

std::string SanitizeUtf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  AppendSanitizedUtf8(in, &out, /*final=*/true);
  return out;
}

bool NfcInert(uint32_t cp) {
  if (cp < 0x300) return true;
  if (cp >= 0x1100 && cp <= 0x11FF) return false;  // Hangul jamo compose algorithmically
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  if (p->combining_class != 0) return false;
  // A canonical decomposition (decomp_type 0 with a mapping) changes under NFC; a
  // compatibility one (decomp_type != 0) does not.
  if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return false;
  // utf8proc marks code points that can be the second of a composition pair with
  // comb_index >= 0x8000 (0xFFFF: takes no part in compositions).
  if (p->comb_index != UINT16_MAX && p->comb_index >= 0x8000) return false;
  return true;
}

bool MayNeedNfc(std::string_view s) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Code points below U+0300 have lead bytes < 0xCC; continuation bytes are <= 0xBF.
    if (p[i] < 0xCC) {
      ++i;
      continue;
    }
    size_t pos = i;
    uint32_t cp = NextCodepoint(s, &pos);
    if (!NfcInert(cp)) return true;
    i = pos;
  }
  return false;
}

std::string NfcNormalize(std::string_view s) {
  // Unicode guarantees a normalisation boundary before every NFC-inert code point (it is a
  // starter with NFC_QC = Yes), so only the stretches from the inert code point before a
  // non-inert one up to the next inert code point need utf8proc; the rest is copied.
  std::string out;
  size_t copied = 0;         // s[0, copied) is in `out`
  size_t last_inert = 0;     // start of the most recent inert code point (a boundary)
  size_t i = 0;
  const size_t n = s.size();
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  while (i < n) {
    if (p[i] < 0xCC) {  // below U+0300: inert (or a continuation byte of such a character)
      if ((p[i] & 0xC0) != 0x80) last_inert = i;
      ++i;
      continue;
    }
    size_t next = i;
    uint32_t cp = NextCodepoint(s, &next);
    if (NfcInert(cp)) {
      last_inert = i;
      i = next;
      continue;
    }
    // A region starts at the boundary before this code point's starter and runs to the next
    // inert code point.
    size_t start = std::max(last_inert, copied);
    size_t end = next;
    while (end < n) {
      if (p[end] < 0xCC) break;
      size_t after = end;
      uint32_t c2 = NextCodepoint(s, &after);
      if (NfcInert(c2)) break;
      end = after;
    }
    if (out.empty()) out.reserve(n + 16);
    out.append(s.data() + copied, start - copied);
    out += NfcNormalizeFull(s.substr(start, end - start));
    copied = end;
    i = end;
    last_inert = end;
  }
  if (copied == 0) return std::string(s);
  out.append(s.data() + copied, n - copied);
  return out;
}

std::string NfcNormalizeFull(std::string_view s) {
  utf8proc_uint8_t* dst = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &dst,
                                    static_cast<utf8proc_option_t>(UTF8PROC_STABLE |
                                                                   UTF8PROC_COMPOSE));
  if (n < 0) {
    // Only on invalid UTF-8 or out of memory; callers sanitise first, so keep the text as is.
    std::free(dst);
    return std::string(s);
  }
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

void AppendCodepoint(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t NextCodepoint(std::string_view s, size_t* pos) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data()) + *pos;
  unsigned char c = p[0];
  if (c < 0x80) {
    *pos += 1;
    return c;
  }
  if (c < 0xE0) {
    *pos += 2;
    return ((c & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    *pos += 3;
    return ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *pos += 4;
  return ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

const ByteUnicodeMap& GetByteUnicodeMap() {
  static const ByteUnicodeMap* map = [] {
    auto* m = new ByteUnicodeMap();
    m->cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      m->byte_to_cp[b] = static_cast<uint16_t>(cp);
      AppendCodepoint(&m->byte_to_utf8[b], cp);
      m->cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return *map;
}

std::string BytesToUnicode(std::string_view bytes) {
  const ByteUnicodeMap& m = GetByteUnicodeMap();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += m.byte_to_utf8[c];
  return out;
}

bool UnicodeToBytes(std::string_view spelled, std::string* out) {
  const ByteUnicodeMap& m = GetByteUnicodeMap();
  out->clear();
  out->reserve(spelled.size());
  size_t pos = 0;
  while (pos < spelled.size()) {
    uint32_t cp = NextCodepoint(spelled, &pos);
    if (cp >= m.cp_to_byte.size() || m.cp_to_byte[cp] < 0) return false;
    out->push_back(static_cast<char>(m.cp_to_byte[cp]));
  }
  return true;
}

}  // namespace rs::text
