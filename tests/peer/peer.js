// The independent peer for tests/tokenizer_peer_test.sh: the Qwen tokenizer as implemented by
// @lenml/tokenizers (a port of transformers.js), driven from files so the shell test can
// compare its output byte for byte with `rigserve tokenize` / `rigserve detokenize`.
//
//   node peer.js encode  TOKENIZER_JSON OUT_DIR FILE...   writes OUT_DIR/<name>.peer.ids
//   node peer.js decode  TOKENIZER_JSON OUT_DIR IDS_FILE...
//        writes OUT_DIR/<name>.peer.dec, the decoded text (UTF-8) of each <name>.ids
//   node peer.js windows TOKENIZER_JSON OUT_DIR IDS_FILE...
//        cuts id windows (deterministic) from each ids file; writes OUT_DIR/windows.txt (one id
//        list per line) and OUT_DIR/windows.peer.jsonl (the decoded text of each, JSON)
//   node peer.js compare-lines A.jsonl B.jsonl           exit 1 unless the JSON strings match
//
// Input files are read as bytes and decoded with TextDecoder (invalid UTF-8 -> U+FFFD per the
// WHATWG rule, BOM kept), which is how the peer sees invalid input.
'use strict';
const fs = require('fs');
const path = require('path');

function loadTokenizer(tokJsonPath) {
  const { TokenizerLoader } = require('@lenml/tokenizers');
  const tokenizerJSON = JSON.parse(fs.readFileSync(tokJsonPath, 'utf8'));
  const cfgPath = path.join(path.dirname(tokJsonPath), 'tokenizer_config.json');
  const tokenizerConfig = fs.existsSync(cfgPath)
    ? JSON.parse(fs.readFileSync(cfgPath, 'utf8'))
    : { tokenizer_class: 'Qwen2Tokenizer' };
  return TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
}

function readText(file) {
  const bytes = fs.readFileSync(file);
  return new TextDecoder('utf-8', { fatal: false, ignoreBOM: true }).decode(bytes);
}

function readIds(file) {
  const s = fs.readFileSync(file, 'utf8').trim();
  return s.length ? s.split(/\s+/).map(Number) : [];
}

function decode(tok, ids) {
  return ids.length ? tok.decode(ids, { skip_special_tokens: false }) : '';
}

// Small deterministic PRNG (mulberry32) so windows are the same on every run.
function rng(seed) {
  return function () {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function main(argv) {
  const [cmd, ...rest] = argv;
  if (cmd === 'encode') {
    const [tokJson, outDir, ...files] = rest;
    const tok = loadTokenizer(tokJson);
    for (const f of files) {
      const ids = tok.encode(readText(f), { add_special_tokens: false });
      const out = path.join(outDir, path.basename(f, path.extname(f)) + '.peer.ids');
      fs.writeFileSync(out, ids.join(' ') + '\n');
    }
    return 0;
  }
  if (cmd === 'decode') {
    const [tokJson, outDir, ...idsFiles] = rest;
    const tok = loadTokenizer(tokJson);
    for (const f of idsFiles) {
      const out = path.join(outDir, path.basename(f, '.ids') + '.peer.dec');
      fs.writeFileSync(out, Buffer.from(decode(tok, readIds(f)), 'utf8'));
    }
    return 0;
  }
  if (cmd === 'windows') {
    const [tokJson, outDir, ...idsFiles] = rest;
    const tok = loadTokenizer(tokJson);
    const rand = rng(20260813);
    const lines = [];
    const texts = [];
    for (const f of idsFiles) {
      const ids = readIds(f);
      if (ids.length === 0) continue;
      for (let k = 0; k < 12; ++k) {
        const start = Math.floor(rand() * ids.length);
        const len = 1 + Math.floor(rand() * Math.min(6, ids.length - start));
        const w = ids.slice(start, start + len);
        lines.push(w.join(' '));
        texts.push(JSON.stringify(decode(tok, w)));
      }
    }
    fs.writeFileSync(path.join(outDir, 'windows.txt'), lines.join('\n') + '\n');
    fs.writeFileSync(path.join(outDir, 'windows.peer.jsonl'), texts.join('\n') + '\n');
    return 0;
  }
  if (cmd === 'compare-lines') {
    const [a, b] = rest;
    const la = fs.readFileSync(a, 'utf8').split('\n').filter((x) => x.length);
    const lb = fs.readFileSync(b, 'utf8').split('\n').filter((x) => x.length);
    let bad = 0;
    if (la.length !== lb.length) {
      console.error(`line counts differ: ${la.length} vs ${lb.length}`);
      bad++;
    }
    for (let i = 0; i < Math.min(la.length, lb.length); ++i) {
      const x = JSON.parse(la[i]);
      const y = JSON.parse(lb[i]);
      if (x !== y) {
        if (bad < 10) console.error(`window ${i + 1}: ${JSON.stringify(x)} != ${JSON.stringify(y)}`);
        bad++;
      }
    }
    return bad ? 1 : 0;
  }
  console.error('usage: node peer.js encode|decode|windows|compare-lines ...');
  return 2;
}

process.exitCode = main(process.argv.slice(2));
