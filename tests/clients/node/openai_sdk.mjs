// The official openai Node SDK against a live Basis gateway, as its users call it. Reads BASIS_BASE_URL,
// BASIS_API_KEY (a funded key) and BASIS_BROKE_KEY (a key on an account without credit); prints one JSON
// object, one entry per feature, for tests/clients/test_openai_node.py to check.
import OpenAI from "openai";
import { zodFunction, zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";

const baseURL = process.env.BASIS_BASE_URL;
const client = new OpenAI({ baseURL, apiKey: process.env.BASIS_API_KEY, maxRetries: 0 });
const hi = [{ role: "user", content: "Say hi" }];
const out = {};

// Chat, and two requests at once.
const chat = await client.chat.completions.create({ model: "basis-default", messages: hi, max_tokens: 12 });
const pair = await Promise.all([0, 1].map(() =>
  client.chat.completions.create({ model: "basis-default", messages: hi, max_tokens: 6 })));
out.chat = { id: chat.id, object: chat.object, message: chat.choices[0].message,
  finish_reason: chat.choices[0].finish_reason, usage: chat.usage, concurrent_ids: pair.map((c) => c.id) };

// Streaming with usage in a last chunk without choices.
const stream = await client.chat.completions.create({ model: "basis-default", messages: hi, max_tokens: 10,
  stream: true, stream_options: { include_usage: true } });
const chunks = [];
for await (const chunk of stream) chunks.push(chunk);
out.stream = { ids: [...new Set(chunks.map((c) => c.id))],
  text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
  finish_reasons: chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter(Boolean),
  last_choices: chunks.at(-1).choices.length, usage: chunks.at(-1).usage };

// Structured output: a zod schema, parsed by the SDK's own helper.
const City = z.object({ name: z.string().max(16), country: z.string().max(16), capital: z.boolean() });
const parsed = await client.chat.completions.parse({ model: "basis-default", max_tokens: 160, temperature: 0,
  messages: [{ role: "user", content: "Describe Paris." }], response_format: zodResponseFormat(City, "city") });
out.parse = { finish_reason: parsed.choices[0].finish_reason, content: parsed.choices[0].message.content,
  parsed: parsed.choices[0].message.parsed, usage: parsed.usage };

// Tool calls: "required", a named function, and zodFunction's parsed arguments.
const weather = { type: "function", function: { name: "get_weather", description: "The weather in a city.", strict: true,
  parameters: { type: "object", properties: { city: { type: "string", maxLength: 16 } }, required: ["city"],
    additionalProperties: false } } };
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const required = await client.chat.completions.create({ model: "basis-default", messages: ask, tools: [weather],
  tool_choice: "required", max_tokens: 80, temperature: 0 });
const named = await client.chat.completions.parse({ model: "basis-default", messages: ask, max_tokens: 80,
  temperature: 0, tools: [weather, zodFunction({ name: "get_forecast",
    parameters: z.object({ city: z.string().max(16), unit: z.enum(["celsius", "fahrenheit"]) }) })],
  tool_choice: { type: "function", function: { name: "get_forecast" } } });
out.tools = { required: { finish_reason: required.choices[0].finish_reason, message: required.choices[0].message },
  named: { finish_reason: named.choices[0].finish_reason,
    calls: named.choices[0].message.tool_calls.map((c) => ({ id: c.id, name: c.function.name,
      arguments: c.function.arguments, parsed_arguments: c.function.parsed_arguments })) } };

// Typed errors: each status gets the SDK's own class.
async function failure(call) {
  try {
    await call();
    return { raised: null };
  } catch (err) {
    const classes = ["AuthenticationError", "BadRequestError", "NotFoundError", "RateLimitError", "APIError"];
    return { raised: err.constructor.name, status: err.status, code: err.code ?? null, param: err.param ?? null,
      instance_of: classes.filter((name) => err instanceof OpenAI[name]), message: err.message };
  }
}
const badKey = new OpenAI({ baseURL, apiKey: "sk-basis-not-a-key", maxRetries: 0 });
const broke = new OpenAI({ baseURL, apiKey: process.env.BASIS_BROKE_KEY, maxRetries: 0 });
out.errors = {
  bad_key: await failure(() => badKey.chat.completions.create({ model: "basis-default", messages: hi })),
  unknown_model: await failure(() => client.chat.completions.create({ model: "gpt-nothing", messages: hi })),
  tool_choice_auto: await failure(() => client.chat.completions.create({ model: "basis-default", messages: ask,
    tools: [weather] })),
  bad_schema: await failure(() => client.chat.completions.create({ model: "basis-default", messages: hi,
    response_format: { type: "json_schema", json_schema: { name: "x", strict: true,
      schema: { type: "string", pattern: "^a+$" } } } })),
  // zod writes "minimum" and "maximum" for .int(): keywords the engines cannot enforce.
  zod_int: await failure(() => client.chat.completions.parse({ model: "basis-default", messages: hi,
    response_format: zodResponseFormat(z.object({ n: z.number().int() }), "count") })),
  no_credit: await failure(() => broke.chat.completions.create({ model: "basis-default", messages: hi,
    max_tokens: 8 })),
};

console.log(JSON.stringify(out));
