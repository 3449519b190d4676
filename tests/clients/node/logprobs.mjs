// Log-probabilities through the official openai Node SDK (chat, streamed and not; legacy completions).
// Reads BASIS_BASE_URL and BASIS_API_KEY; prints one JSON object for tests/clients/test_logprobs.py.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.BASIS_BASE_URL, apiKey: process.env.BASIS_API_KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "Name three fruits." }];
const out = {};

const chat = await client.chat.completions.create({ model: "basis-default", messages, max_tokens: 8,
  temperature: 0, logprobs: true, top_logprobs: 3 });
out.chat = { content: chat.choices[0].message.content, logprobs: chat.choices[0].logprobs, usage: chat.usage };

const stream = await client.chat.completions.create({ model: "basis-default", messages, max_tokens: 8,
  logprobs: true, top_logprobs: 2, stream: true, stream_options: { include_usage: true } });
const chunks = [];
for await (const chunk of stream) chunks.push(chunk);
out.stream = { text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
  tokens: chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []), usage: chunks.at(-1).usage };

const legacy = await client.completions.create({ model: "basis-default", prompt: "The three primary colors are",
  max_tokens: 6, temperature: 0, logprobs: 2 });
out.completions = { text: legacy.choices[0].text, logprobs: legacy.choices[0].logprobs, usage: legacy.usage };

try {
  await client.chat.completions.create({ model: "basis-default", messages, logprobs: true, top_logprobs: 21 });
  out.too_many = { raised: null };
} catch (err) {
  out.too_many = { raised: err.constructor.name, status: err.status, param: err.param ?? null };
}
console.log(JSON.stringify(out));
