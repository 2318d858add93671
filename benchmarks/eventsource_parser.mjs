// eventsource-parser (the JavaScript SSE parser) on a workload written by bench_decoder.py.
//
//   node benchmarks/eventsource_parser.mjs PAYLOAD PACKAGE_DIR REPEAT
//
// PAYLOAD holds the chunks, each as a 4-byte big-endian length then its bytes. A "bytes"
// run decodes them as a Node stream with setEncoding("utf8") does (StringDecoder: a
// character split across reads comes out whole; much faster here than TextDecoder's
// streaming decode) and feeds the text to one parser, counting events: the same work as
// ssekit's bytes in, events out. A "text" run feeds the same text decoded beforehand (the
// parser alone). Prints JSON: events, data characters, seconds per run of each kind
// (medians of REPEAT after a warm-up).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { pathToFileURL } from "node:url";

const [payload, packageDir, repeat] = process.argv.slice(2);
const { createParser } = await import(pathToFileURL(join(packageDir, "dist", "index.js")));

const raw = readFileSync(payload);
const chunks = [];
for (let at = 0; at < raw.length; ) {
  const size = raw.readUInt32BE(at);
  chunks.push(raw.subarray(at + 4, at + 4 + size));
  at += 4 + size;
}

const texts = [];
const streaming = new TextDecoder();
for (const chunk of chunks) texts.push(streaming.decode(chunk, { stream: true }));

function run(fromBytes) {
  let events = 0;
  let chars = 0;
  const parser = createParser({
    onEvent(event) {
      events += 1;
      chars += event.data.length;
    },
  });
  if (fromBytes) {
    const decoder = new StringDecoder("utf8");
    for (const chunk of chunks) parser.feed(decoder.write(chunk));
  } else {
    for (const text of texts) parser.feed(text);
  }
  return [events, chars];
}

function median(fromBytes) {
  run(fromBytes);
  const times = [];
  for (let i = 0; i < Number(repeat); i++) {
    const start = process.hrtime.bigint();
    run(fromBytes);
    times.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

const [events, chars] = run(true);
console.log(JSON.stringify({ events, chars, seconds: median(true), text_seconds: median(false) }));
