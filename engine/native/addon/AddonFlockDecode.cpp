// A thread of each context's own, for its decodes (engine/batch.ts):
//
// flockDecodeBatch(): node-llama-cpp's decodeBatch (llama_decode of the context's current batch,
// then llama_synchronize), run on this thread instead of libuv's pool. The pool hands
// consecutive decodes to whichever of its threads wakes, so a generating sequence's steps hop
// between threads and cores; llama-server decodes every step on one thread.
//
// flockGenerate(job, onEvent): plain decoding of one sequence, decode → draw → decode … on this
// thread, for as long as nothing else needs the context. Each token drawn is posted to
// JavaScript, which detokenizes, checks stop strings and streams it while the next step runs;
// the step itself never waits for JavaScript. The draw is flockSampleToken's
// (AddonFlockSampler.cpp) on the logits llama.cpp left, after the request's logit bias, with the
// noise value JavaScript computed for that position: the same tokens as decoding/plain.ts's own
// loop. Why: a step handed back and forth (worker → event loop → decoder → worker) cost about
// 0.4 ms on the 2-core machines flock is benchmarked on, an eighth of a small model's step at
// 151,936 tokens.
//
// One operation at a time per context, as engine/batch.ts guarantees. The thread starts with
// the first operation and is joined when the context is disposed (flockStopDecodeThread, called
// from the addon's patch).
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "llama.h"
#include "napi.h"
#include "AddonContext.h"

int64_t flockSampleTokenAt(const float* logits, size_t n, double temperature, double topK, double topP, double minP, bool keyed, double value);

namespace {

// One decode in flight: created on the main thread, filled in by the decode thread, settled
// (and freed) back on the main thread.
struct PendingDecode {
    AddonContext* context;
    Napi::Promise::Deferred deferred;
    Napi::ThreadSafeFunction done;
    std::string error;
};

void settle(Napi::Env env, Napi::Function, PendingDecode* pending) {
    std::unique_ptr<PendingDecode> owned(pending);
    owned->done.Unref(env);
    if (owned->error.empty()) {
        owned->deferred.Resolve(env.Undefined());
    } else {
        owned->deferred.Reject(Napi::Error::New(env, owned->error).Value());
    }
    owned->context->Unref();
}

// What a generation loop posts: a token drawn (token >= 0), or its end (token < 0) with how many
// tokens it decoded (the first token it was given, then the tokens it drew, in order) and why it
// failed, if it did.
struct GenerationEvent {
    int32_t token;
    uint32_t decoded;
    std::string error;
};

// A generation loop's settings, read once on the main thread (engine/sequence.ts's
// NativeGenerationJob), and its progress.
struct GenerationJob {
    AddonContext* context;
    int32_t sequence;
    int32_t position;  // of `first`
    int32_t first;     // drawn already, not yet decoded
    double temperature, topK, topP, minP;
    bool keyed;
    std::vector<double> values;  // one per token the loop may draw: its budget
    std::vector<int32_t> biasTokens;
    std::vector<double> biasValues;
    std::vector<int32_t> stopTokens;  // sorted
    // The penalties (sampler.ts's adjustLogits): the tokens seen so far (prompt, then output; the
    // repetition penalty reads the last repeatLastN of them, all when negative) and how often
    // each was generated (presence and frequency).
    double repetitionPenalty, presencePenalty, frequencyPenalty;
    int32_t repeatLastN;
    std::vector<int32_t> history;
    std::unordered_map<int32_t, int32_t> generated;
    uint32_t window;                  // tokens drawn and not yet consumed, at most
    Napi::ThreadSafeFunction events;
    // Under the thread's mutex:
    uint32_t consumed = 0;
    bool stop = false;
};

void deliver(Napi::Env env, Napi::Function onEvent, GenerationEvent* event) {
    std::unique_ptr<GenerationEvent> owned(event);
    if (env == nullptr || onEvent.IsEmpty()) return;
    onEvent.Call({Napi::Number::New(env, owned->token), Napi::Number::New(env, owned->decoded),
                  owned->error.empty() ? env.Undefined() : Napi::String::New(env, owned->error)});
}

class DecodeThread {
    public:
        DecodeThread(Napi::Env env, AddonContext* context) : context(context) {
            done = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "flockDecodeBatch", 0, 1);
            // Kept alive only while a decode is in flight (Ref in request, Unref in settle).
            done.Unref(env);
            thread = std::thread([this] { run(); });
        }

        // Main thread. Returns false when an operation is already running.
        bool request(Napi::Env env, PendingDecode* decode) {
            std::lock_guard<std::mutex> lock(mutex);
            if (busy()) return false;
            decode->done = done;
            done.Ref(env);
            context->Ref();
            pending = decode;
            wake.notify_all();
            return true;
        }

        // Main thread. Returns false when an operation is already running.
        bool start(std::unique_ptr<GenerationJob> generation) {
            std::lock_guard<std::mutex> lock(mutex);
            if (busy()) return false;
            context->Ref();
            job = std::move(generation);
            wake.notify_all();
            return true;
        }

        // Main thread: the generation loop stops after its current step (no effect without one).
        void stopGeneration() {
            std::lock_guard<std::mutex> lock(mutex);
            if (job) job->stop = true;
            wake.notify_all();
        }

        // Main thread: JavaScript has consumed `count` more of the loop's tokens.
        void consumed(uint32_t count) {
            std::lock_guard<std::mutex> lock(mutex);
            if (job) job->consumed += count;
            wake.notify_all();
        }

        // Main thread: finishes the operation in flight, if any, and ends the thread. `release`:
        // also release the completion function (not from a finalizer at exit, when Node may have
        // closed it already).
        void stop(bool release) {
            {
                std::lock_guard<std::mutex> lock(mutex);
                stopping = true;
                if (job) job->stop = true;
                wake.notify_all();
            }
            thread.join();
            if (release) done.Release();
        }

    private:
        AddonContext* context;
        Napi::ThreadSafeFunction done;
        std::thread thread;
        std::mutex mutex;
        std::condition_variable wake;
        PendingDecode* pending = nullptr;
        // Set from start() until the loop has ended (this thread runs it, so it is not waited for meanwhile).
        std::unique_ptr<GenerationJob> job;
        bool stopping = false;

        bool busy() const { return pending != nullptr || job != nullptr; }

        void run() {
            for (;;) {
                PendingDecode* decode = nullptr;
                GenerationJob* generation = nullptr;
                {
                    std::unique_lock<std::mutex> lock(mutex);
                    wake.wait(lock, [this] { return pending != nullptr || job != nullptr || stopping; });
                    if (pending != nullptr) {
                        decode = pending;
                    } else if (job != nullptr) {
                        generation = job.get();
                    } else {
                        return;
                    }
                }
                if (decode != nullptr) {
                    decode->error = this->decode(context->ctx, context->batch);
                    {
                        std::lock_guard<std::mutex> lock(mutex);
                        pending = nullptr;
                    }
                    // Queued calls are still delivered after stop() releases the function.
                    decode->done.NonBlockingCall(decode, settle);
                    continue;
                }
                auto* end = new GenerationEvent{-1, 0, ""};
                generate(*generation, *end);
                std::unique_ptr<GenerationJob> finished;
                {
                    std::lock_guard<std::mutex> lock(mutex);
                    finished = std::move(job);
                }
                AddonContext* owner = finished->context;
                finished->events.NonBlockingCall(end, [owner](Napi::Env env, Napi::Function onEvent, GenerationEvent* event) {
                    deliver(env, onEvent, event);
                    owner->Unref();
                });
                finished->events.Release();
            }
        }

        // llama_decode, then llama_synchronize: the same call and messages as node-llama-cpp's
        // AddonContextDecodeBatchWorker; "" when it succeeded.
        static std::string decode(llama_context* ctx, const llama_batch& batch) {
            try {
                const int r = llama_decode(ctx, batch);
                if (r == 1) return "could not find a KV slot for the batch (try reducing the size of the batch or increase the context)";
                if (r != 0) return "Eval has failed";
                llama_synchronize(ctx);
                return "";
            } catch (const std::exception& e) {
                return e.what();
            } catch (...) {
                return "Unknown error when calling \"llama_decode\"";
            }
        }

        // sampler.ts's adjustLogits after the bias: each step in double, stored as float.
        static void penalize(const GenerationJob& g, float* logits, size_t n_vocab) {
            if (g.repetitionPenalty != 1 && g.repeatLastN != 0) {
                const size_t from = g.repeatLastN < 0 ? 0 : g.history.size() - std::min(g.history.size(), size_t(g.repeatLastN));
                std::unordered_set<int32_t> seen(g.history.begin() + from, g.history.end());
                for (const int32_t t : seen) {
                    if (t < 0 || size_t(t) >= n_vocab) continue;
                    logits[t] = logits[t] > 0 ? float(double(logits[t]) / g.repetitionPenalty) : float(double(logits[t]) * g.repetitionPenalty);
                }
            }
            if (g.presencePenalty != 0 || g.frequencyPenalty != 0) {
                for (const auto& [t, count] : g.generated) {
                    if (count > 0 && t >= 0 && size_t(t) < n_vocab) logits[t] = float(double(logits[t]) - (g.presencePenalty + g.frequencyPenalty * count));
                }
            }
        }

        // Decode → draw → post, until the budget is spent, an end-of-generation or stop token is
        // drawn, JavaScript asks it to stop, or a decode fails. The last token drawn is not decoded.
        void generate(GenerationJob& g, GenerationEvent& end) {
            llama_context* ctx = context->ctx;
            const llama_vocab* vocab = llama_model_get_vocab(llama_get_model(ctx));
            const size_t n_vocab = size_t(llama_vocab_n_tokens(vocab));
            llama_batch batch = llama_batch_init(1, 0, 1);
            int32_t token = g.first;
            int32_t position = g.position;
            uint32_t drawn = 0;
            try {
                for (;;) {
                    batch.n_tokens = 1;
                    batch.token[0] = token;
                    batch.pos[0] = position;
                    batch.n_seq_id[0] = 1;
                    batch.seq_id[0][0] = g.sequence;
                    batch.logits[0] = 1;
                    end.error = decode(ctx, batch);
                    if (!end.error.empty()) break;
                    end.decoded++;
                    position++;
                    float* logits = llama_get_logits_ith(ctx, -1);
                    if (logits == nullptr) {
                        end.error = "no logits for the decoded token";
                        break;
                    }
                    // sampler.ts's adjustLogits: the bias added in double, stored as float.
                    for (size_t i = 0; i < g.biasTokens.size(); i++) {
                        const int32_t t = g.biasTokens[i];
                        if (t >= 0 && size_t(t) < n_vocab) logits[t] = float(double(logits[t]) + g.biasValues[i]);
                    }
                    penalize(g, logits, n_vocab);
                    const int64_t next = flockSampleTokenAt(logits, n_vocab, g.temperature, g.topK, g.topP, g.minP, g.keyed, g.values[drawn]);
                    if (next < 0) {
                        end.error = "every token has probability zero";
                        break;
                    }
                    drawn++;
                    g.history.push_back(int32_t(next));
                    g.generated[int32_t(next)]++;
                    g.events.NonBlockingCall(new GenerationEvent{int32_t(next), 0, ""}, deliver);
                    const bool stopToken = llama_vocab_is_eog(vocab, llama_token(next)) || std::binary_search(g.stopTokens.begin(), g.stopTokens.end(), int32_t(next));
                    if (stopToken || drawn >= g.values.size()) break;
                    {
                        std::unique_lock<std::mutex> lock(mutex);
                        wake.wait(lock, [&] { return g.stop || drawn - g.consumed < g.window; });
                        if (g.stop) break;
                    }
                    token = int32_t(next);
                }
            } catch (const std::exception& e) {
                end.error = e.what();
            } catch (...) {
                end.error = "Unknown error when calling \"llama_decode\"";
            }
            llama_batch_free(batch);
        }
};

// Main thread only. Never destroyed at exit: a static destructor would join threads that may
// still wait for work.
std::unordered_map<AddonContext*, std::unique_ptr<DecodeThread>>& decodeThreads() {
    static auto* threads = new std::unordered_map<AddonContext*, std::unique_ptr<DecodeThread>>();
    return *threads;
}

DecodeThread& decodeThread(Napi::Env env, AddonContext* context) {
    auto& thread = decodeThreads()[context];
    if (!thread) thread = std::make_unique<DecodeThread>(env, context);
    return *thread;
}

DecodeThread* existingDecodeThread(AddonContext* context) {
    auto& threads = decodeThreads();
    const auto found = threads.find(context);
    return found == threads.end() ? nullptr : found->second.get();
}

template <typename T, typename Array>
std::vector<T> copyOf(const Napi::Object& job, const char* name) {
    const Napi::Value value = job.Get(name);
    if (!value.IsTypedArray()) throw std::invalid_argument(std::string("flockGenerate: job.") + name + " must be a typed array");
    const Array array = value.As<Array>();
    return std::vector<T>(array.Data(), array.Data() + array.ElementLength());
}

double numberOf(const Napi::Object& job, const char* name) {
    const Napi::Value value = job.Get(name);
    if (!value.IsNumber()) throw std::invalid_argument(std::string("flockGenerate: job.") + name + " must be a number");
    return value.As<Napi::Number>().DoubleValue();
}

}  // namespace

void flockStopDecodeThread(AddonContext* context, bool release) {
    auto& threads = decodeThreads();
    const auto found = threads.find(context);
    if (found == threads.end()) return;
    std::unique_ptr<DecodeThread> thread = std::move(found->second);
    threads.erase(found);
    thread->stop(release);
}

Napi::Value AddonContext::FlockDecodeBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto deferred = Napi::Promise::Deferred::New(env);
    if (disposed || !contextLoaded || !has_batch) {
        deferred.Reject(Napi::Error::New(env, disposed ? "Context is disposed" : "No batch to decode").Value());
        return deferred.Promise();
    }
    auto* decode = new PendingDecode{this, deferred, Napi::ThreadSafeFunction(), ""};
    if (!decodeThread(env, this).request(env, decode)) {
        delete decode;
        deferred.Reject(Napi::Error::New(env, "A decode is already running on this context").Value());
    }
    return deferred.Promise();
}

// flockGenerate(job, onEvent): starts the generation loop (engine/sequence.ts's NativeGenerationJob);
// onEvent(token, decoded, error?) for each token drawn (token >= 0) and once at the end (token -1).
Napi::Value AddonContext::FlockGenerate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (disposed || !contextLoaded) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
        Napi::TypeError::New(env, "flockGenerate(job: object, onEvent: function)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    auto job = std::make_unique<GenerationJob>();
    try {
        const Napi::Object spec = info[0].As<Napi::Object>();
        job->context = this;
        job->sequence = int32_t(numberOf(spec, "sequence"));
        job->position = int32_t(numberOf(spec, "position"));
        job->first = int32_t(numberOf(spec, "first"));
        job->temperature = numberOf(spec, "temperature");
        job->topK = numberOf(spec, "topK");
        job->topP = numberOf(spec, "topP");
        job->minP = numberOf(spec, "minP");
        job->keyed = spec.Get("keyed").ToBoolean().Value();
        job->values = copyOf<double, Napi::Float64Array>(spec, "values");
        job->biasTokens = copyOf<int32_t, Napi::Int32Array>(spec, "biasTokens");
        job->biasValues = copyOf<double, Napi::Float64Array>(spec, "biasValues");
        job->stopTokens = copyOf<int32_t, Napi::Int32Array>(spec, "stopTokens");
        job->window = uint32_t(std::max(1.0, numberOf(spec, "window")));
        job->repetitionPenalty = numberOf(spec, "repetitionPenalty");
        job->repeatLastN = int32_t(numberOf(spec, "repeatLastN"));
        job->presencePenalty = numberOf(spec, "presencePenalty");
        job->frequencyPenalty = numberOf(spec, "frequencyPenalty");
        job->history = copyOf<int32_t, Napi::Int32Array>(spec, "history");
        const std::vector<int32_t> generatedTokens = copyOf<int32_t, Napi::Int32Array>(spec, "generatedTokens");
        const std::vector<int32_t> generatedCounts = copyOf<int32_t, Napi::Int32Array>(spec, "generatedCounts");
        if (generatedTokens.size() != generatedCounts.size()) throw std::invalid_argument("flockGenerate: job.generatedTokens and job.generatedCounts must have the same length");
        for (size_t i = 0; i < generatedTokens.size(); i++) job->generated[generatedTokens[i]] = generatedCounts[i];
    } catch (const std::exception& e) {
        Napi::TypeError::New(env, e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (job->values.empty() || job->biasTokens.size() != job->biasValues.size()) {
        Napi::TypeError::New(env, "flockGenerate: job.values must not be empty, and job.biasTokens and job.biasValues must have the same length").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    std::sort(job->stopTokens.begin(), job->stopTokens.end());
    job->events = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "flockGenerate", 0, 1);
    Napi::ThreadSafeFunction events = job->events;
    if (!decodeThread(env, this).start(std::move(job))) {
        events.Release();
        Napi::Error::New(env, "A decode is already running on this context").ThrowAsJavaScriptException();
    }
    return env.Undefined();
}

// flockGenerateStop(): the running generation loop stops after its current step.
Napi::Value AddonContext::FlockGenerateStop(const Napi::CallbackInfo& info) {
    if (DecodeThread* thread = existingDecodeThread(this)) thread->stopGeneration();
    return info.Env().Undefined();
}

// flockGenerateConsumed(count): JavaScript has taken `count` more of the loop's tokens (the loop
// runs at most job.window tokens ahead of it).
Napi::Value AddonContext::FlockGenerateConsumed(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsNumber()) {
        Napi::TypeError::New(info.Env(), "flockGenerateConsumed(count: number)").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    if (DecodeThread* thread = existingDecodeThread(this)) thread->consumed(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
}
