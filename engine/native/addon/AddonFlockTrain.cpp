// flock: LoRA training inside llama.cpp (issue #23). A rank-r adapter (A random, B zero, as PEFT
// initialises them) is set on a training context of a frozen base, and llama.cpp's own optimizer
// trains it: llama_opt_init with a param_filter that accepts only the adapter's tensors (flock's
// patches/llama-cpp-opt-lora.diff offers the context's adapters to the filter; upstream walks the
// model's tensors only), then llama_opt_epoch over a ggml_opt_dataset of token windows. The
// trained tensors are written as an ordinary llama.cpp LoRA GGUF (general.type=adapter,
// adapter.type=lora, adapter.lora.alpha, <base tensor>.lora_a [d_in, r] / .lora_b [r, d_out]).
//
// flockTrainGates trains PHATGOOSE gates for a frozen expert the same way (patches/
// llama-cpp-opt-gates.diff), and flockTrainGradientCheck compares the training graph's gradient
// with finite differences (both below).
//
// Registered on the addon's exports by patches/addon-exports.diff; TypeScript reaches them through
// experts/train-lora.ts and experts/train-gates.ts.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-opt.h"
#include "gguf.h"
#include "llama.h"
#include "napi.h"

namespace {

struct TrainOptimizer {
    float lr = 1e-4f;
    float lrMin = 1e-4f;
    float weightDecay = 0.0f;
    int32_t epoch = 0;
    int32_t epochs = 1;
    float current() const {
        if (epochs <= 1) return lr;
        // cosine from lr (first epoch) to lrMin (last epoch)
        const float t = float(epoch) / float(epochs - 1);
        return lrMin + 0.5f * (lr - lrMin) * (1.0f + std::cos(3.14159265358979f * t));
    }
};

ggml_opt_optimizer_params trainOptimizerParams(void* userdata) {
    const TrainOptimizer& o = *static_cast<const TrainOptimizer*>(userdata);
    ggml_opt_optimizer_params result = ggml_opt_get_default_optimizer_params(nullptr);
    result.adamw.alpha = result.sgd.alpha = o.current();
    result.adamw.wd = result.sgd.wd = o.weightDecay;
    return result;
}

// The adapter tensors the param_filter accepted (llama_opt_init calls it once per tensor).
struct TrainParams {
    std::vector<const ggml_tensor*> tensors;
};

bool endsWith(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool trainParamFilter(const ggml_tensor* tensor, void* userdata) {
    const std::string name = tensor->name;
    if (!endsWith(name, ".lora_a") && !endsWith(name, ".lora_b")) return false; // the base stays frozen
    static_cast<TrainParams*>(userdata)->tensors.push_back(tensor);
    return true;
}

// Progress of the running epoch, for the JS callback (ggml's epoch callback has no user data).
struct TrainProgress {
    Napi::Env env;
    Napi::Function fn;
    int32_t epoch;
};
thread_local TrainProgress* trainProgress = nullptr;

void trainEpochCallback(bool train, ggml_opt_context_t, ggml_opt_dataset_t, ggml_opt_result_t result, int64_t ibatch, int64_t ibatch_max, int64_t t_start_us) {
    TrainProgress* p = trainProgress;
    if (p == nullptr || p->fn.IsEmpty() || p->env.IsExceptionPending()) return;
    double loss = 0, unc = 0;
    ggml_opt_result_loss(result, &loss, &unc);
    const double seconds = double(ggml_time_us() - t_start_us) / 1e6;
    p->fn.Call({Napi::Number::New(p->env, p->epoch), Napi::Boolean::New(p->env, train), Napi::Number::New(p->env, double(ibatch)),
                Napi::Number::New(p->env, double(ibatch_max)), Napi::Number::New(p->env, loss), Napi::Number::New(p->env, seconds)});
}

struct LoraTensor {
    std::string name; // <base tensor>.lora_a / .lora_b
    int64_t ne0, ne1;
    std::vector<float> data;
};

// Writes the GGUF beside path, then renames it there: an interrupted run leaves no half-written file.
bool writeGgufFile(const gguf_context* gguf, const std::string& path, std::string& error) {
    const std::string partial = path + ".partial";
    bool ok = gguf_write_to_file(gguf, partial.c_str(), false);
    if (ok && std::rename(partial.c_str(), path.c_str()) != 0) ok = false;
    if (!ok) {
        std::remove(partial.c_str());
        error = "cannot write " + path;
    }
    return ok;
}

// Writes an adapter GGUF the way convert_lora_to_gguf lays it out.
bool writeAdapter(const std::string& path, const std::string& arch, float alpha, const std::vector<LoraTensor>& tensors, std::string& error) {
    size_t bytes = 0;
    for (const auto& t : tensors) bytes += t.data.size() * sizeof(float) + ggml_tensor_overhead() + 64;
    ggml_init_params params = {bytes + 1024, nullptr, false};
    ggml_context* ctx = ggml_init(params);
    gguf_context* gguf = gguf_init_empty();
    gguf_set_val_str(gguf, "general.architecture", arch.c_str());
    gguf_set_val_str(gguf, "general.type", "adapter");
    gguf_set_val_str(gguf, "adapter.type", "lora");
    gguf_set_val_f32(gguf, "adapter.lora.alpha", alpha);
    for (const auto& t : tensors) {
        ggml_tensor* tensor = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, t.ne0, t.ne1);
        ggml_set_name(tensor, t.name.c_str());
        std::memcpy(tensor->data, t.data.data(), t.data.size() * sizeof(float));
        gguf_add_tensor(gguf, tensor);
    }
    const bool ok = writeGgufFile(gguf, path, error);
    gguf_free(gguf);
    ggml_free(ctx);
    return ok;
}

// AdamW's state between epochs (patches/llama-cpp-opt-state.diff): the step count and each
// parameter's first and second moments, written beside the adapter's checkpoint so that a
// resumed run takes exactly the steps an uninterrupted one would. A GGUF holding
// "flock.optimizer.iter" and tensors "m.<parameter>", "v.<parameter>".
bool writeOptimizerState(const std::string& path, ggml_opt_context_t opt, const std::vector<const ggml_tensor*>& params, std::string& error) {
    size_t bytes = 0;
    for (const ggml_tensor* t : params) bytes += 2 * (ggml_nbytes(t) + ggml_tensor_overhead() + 64);
    ggml_init_params init = {bytes + 1024, nullptr, false};
    ggml_context* ctx = ggml_init(init);
    gguf_context* gguf = gguf_init_empty();
    gguf_set_val_str(gguf, "general.type", "flock.optimizer");
    gguf_set_val_i64(gguf, "flock.optimizer.iter", ggml_opt_flock_iter(opt));
    for (const ggml_tensor* t : params) {
        for (int order = 1; order <= 2 && error.empty(); order++) {
            const ggml_tensor* moment = ggml_opt_flock_moment(opt, t, order);
            if (moment == nullptr || ggml_nelements(moment) != ggml_nelements(t)) {
                error = std::string("the optimizer holds no moments for ") + t->name;
                break;
            }
            ggml_tensor* copy = ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, t->ne);
            ggml_set_name(copy, ((order == 1 ? "m." : "v.") + std::string(t->name)).c_str());
            ggml_backend_tensor_get(moment, copy->data, 0, ggml_nbytes(copy));
            gguf_add_tensor(gguf, copy);
        }
    }
    const bool ok = error.empty() && writeGgufFile(gguf, path, error);
    gguf_free(gguf);
    ggml_free(ctx);
    return ok;
}

// An optimizer state to start from, filled into the moments when llama.cpp allocates them (before
// the first optimizer step; ggml_opt_flock_set_moments_init).
struct OptimizerStart {
    std::map<std::string, std::vector<float>> moments;  // by tensor name in the file
    const std::vector<const ggml_tensor*>* params = nullptr;
    std::string error;
    bool filled = false;
};

bool readOptimizerState(const std::string& path, OptimizerStart& start, int64_t& iter, std::string& error) {
    ggml_context* ctx = nullptr;
    gguf_init_params params = {false, &ctx};
    gguf_context* gguf = gguf_init_from_file(path.c_str(), params);
    if (gguf == nullptr) {
        error = "cannot read the optimizer state " + path;
        return false;
    }
    const int64_t key = gguf_find_key(gguf, "flock.optimizer.iter");
    if (key < 0) error = path + " is not an optimizer state (no flock.optimizer.iter)";
    else iter = gguf_get_val_i64(gguf, key);
    for (ggml_tensor* t = ggml_get_first_tensor(ctx); t != nullptr && error.empty(); t = ggml_get_next_tensor(ctx, t)) {
        const float* data = static_cast<const float*>(t->data);
        start.moments[t->name] = std::vector<float>(data, data + ggml_nelements(t));
    }
    gguf_free(gguf);
    ggml_free(ctx);
    return error.empty();
}

void fillMoments(ggml_opt_context_t opt, void* userdata) {
    auto* start = static_cast<OptimizerStart*>(userdata);
    for (const ggml_tensor* t : *start->params) {
        for (int order = 1; order <= 2; order++) {
            ggml_tensor* moment = ggml_opt_flock_moment(opt, t, order);
            const auto found = start->moments.find((order == 1 ? "m." : "v.") + std::string(t->name));
            if (moment == nullptr || found == start->moments.end() || int64_t(found->second.size()) != ggml_nelements(moment)) {
                start->error = std::string("the optimizer state does not match the adapter at ") + t->name;
                return;
            }
            ggml_backend_tensor_set(moment, found->second.data(), 0, ggml_nbytes(moment));
        }
    }
    start->filled = true;
}

// A text document as it is packed: the vocabulary's BOS (where it adds one) before the first
// document of a stream only, and EOS after every document — "doc EOS doc EOS", the format
// GPT-style pretraining packs and flock's forged chain models generate, so that no window holds
// an EOS -> BOS transition a model never saw.
std::vector<llama_token> tokensOf(const llama_vocab* vocab, const Napi::Value& value, bool first, std::string& error) {
    std::vector<llama_token> out;
    if (value.IsString()) {
        const std::string text = value.As<Napi::String>().Utf8Value();
        int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, first, false);
        if (n < 0) n = -n;
        out.resize(n);
        const int32_t got = llama_tokenize(vocab, text.data(), (int32_t) text.size(), out.data(), n, first, false);
        if (got < 0) error = "tokenization failed";
        else out.resize(got);
        const llama_token eos = llama_vocab_eos(vocab);
        if (eos != LLAMA_TOKEN_NULL && (out.empty() || out.back() != eos)) out.push_back(eos);
    } else if (value.IsTypedArray()) {
        const Napi::TypedArray array = value.As<Napi::TypedArray>();
        if (array.TypedArrayType() == napi_uint32_array) {
            const Napi::Uint32Array a = value.As<Napi::Uint32Array>();
            out.assign(a.Data(), a.Data() + a.ElementLength());
        } else if (array.TypedArrayType() == napi_int32_array) {
            const Napi::Int32Array a = value.As<Napi::Int32Array>();
            out.assign(a.Data(), a.Data() + a.ElementLength());
        } else {
            error = "token arrays must be Uint32Array or Int32Array";
        }
    } else {
        error = "documents must be strings or token arrays";
    }
    return out;
}

// Windows of n_ctx tokens (labels: the next tokens) over the concatenated documents.
std::vector<std::vector<llama_token>> windowsOf(const std::vector<llama_token>& tokens, int64_t n_ctx, int64_t stride) {
    std::vector<std::vector<llama_token>> out;
    for (int64_t start = 0; start + n_ctx + 1 <= int64_t(tokens.size()); start += stride) {
        out.emplace_back(tokens.begin() + start, tokens.begin() + start + n_ctx + 1);
    }
    return out;
}

ggml_opt_dataset_t datasetOf(const std::vector<std::vector<llama_token>>& windows, const std::vector<size_t>& order, int64_t n_ctx) {
    ggml_opt_dataset_t dataset = ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, n_ctx, n_ctx, (int64_t) windows.size(), 1);
    llama_token* data = (llama_token*) ggml_opt_dataset_data(dataset)->data;
    llama_token* labels = (llama_token*) ggml_opt_dataset_labels(dataset)->data;
    for (size_t i = 0; i < order.size(); i++) {
        const auto& w = windows[order[i]];
        std::memcpy(data + i * n_ctx, w.data(), n_ctx * sizeof(llama_token));
        std::memcpy(labels + i * n_ctx, w.data() + 1, n_ctx * sizeof(llama_token));
    }
    return dataset;
}

template <typename T>
T optionOr(const Napi::Object& o, const char* key, T fallback);
template <>
double optionOr<double>(const Napi::Object& o, const char* key, double fallback) {
    return o.Has(key) && o.Get(key).IsNumber() ? o.Get(key).As<Napi::Number>().DoubleValue() : fallback;
}
template <>
std::string optionOr<std::string>(const Napi::Object& o, const char* key, std::string fallback) {
    return o.Has(key) && o.Get(key).IsString() ? o.Get(key).As<Napi::String>().Utf8Value() : fallback;
}

// Everything the training holds, freed in reverse on every exit.
struct TrainResources {
    llama_model* model = nullptr;
    llama_context* ctx = nullptr;
    llama_adapter_lora* adapter = nullptr;
    ggml_opt_dataset_t train = nullptr;
    ggml_opt_dataset_t validation = nullptr;
    ggml_opt_result_t resultTrain = nullptr;
    ggml_opt_result_t resultEval = nullptr;
    std::string initFile;
    ~TrainResources() {
        if (resultEval) ggml_opt_result_free(resultEval);
        if (resultTrain) ggml_opt_result_free(resultTrain);
        if (validation) ggml_opt_dataset_free(validation);
        if (train) ggml_opt_dataset_free(train);
        if (ctx) llama_free(ctx);
        if (adapter) llama_adapter_lora_free(adapter);
        if (model) llama_model_free(model);
        if (!initFile.empty()) std::remove(initFile.c_str());
    }
};

// The base, frozen, as both trainings load it: no repacked buffer types (their weights take no
// backward ops); gpuLayers below 0 leaves llama.cpp's default.
llama_model* loadFrozenBase(const std::string& path, int32_t gpuLayers) {
    llama_model_params mparams = llama_model_default_params();
    mparams.use_extra_bufts = false;
    if (gpuLayers >= 0) mparams.n_gpu_layers = gpuLayers;
    return llama_model_load_from_file(path.c_str(), mparams);
}

// The model's general.architecture, empty where it names none.
std::string architectureOf(const llama_model* model) {
    char buf[256] = {0};
    return llama_model_meta_val_str(model, "general.architecture", buf, sizeof(buf)) < 0 ? std::string() : std::string(buf);
}

// A training context: one sequence, windows of wantCtx tokens (llama.cpp pads n_ctx to 256), each
// one optimizer step; f32 KV cache (no f16 OUT_PROD), no flash attention (no backward).
llama_context* trainingContext(llama_model* model, uint32_t wantCtx, int32_t threads) {
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = wantCtx;
    cparams.n_batch = cparams.n_ubatch = (wantCtx + 255) / 256 * 256;
    cparams.n_seq_max = 1;
    cparams.type_k = cparams.type_v = GGML_TYPE_F32;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cparams.no_perf = true;
    if (threads > 0) cparams.n_threads = cparams.n_threads_batch = threads;
    return llama_init_from_model(model, cparams);
}

} // namespace

// flockTrainLora(options, onEpoch?, onStep?): trains a LoRA adapter on a frozen GGUF base with
// llama.cpp's optimizer (AdamW) and writes it to options.out. Synchronous (blocks the calling
// thread; the CLI and tests run it on their own).
//   options: { modelPath, out, train: (string | Uint32Array)[], validation: (string | Uint32Array)[],
//              modules?: string[] (default attn_q, attn_output, ffn_gate, ffn_up, ffn_down),
//              rank?, alpha?, epochs?, learningRate?, learningRateMin?, weightDecay?, contextSize?,
//              stride?, threads?, seed?, gpuLayers?, init?: adapter GGUF to continue from,
//              checkpoint?: where the adapter is written after every epoch, optimizerCheckpoint?:
//              where AdamW's state is written after every epoch, startEpoch?: the epochs before
//              it count as done (resuming from a checkpoint given as init: the learning-rate
//              schedule and the shuffling go on from there), initOptimizer?: AdamW's state to
//              go on with (the resumed run's optimizerCheckpoint) }
//   Strings are tokenized with the model's vocabulary and packed "doc EOS doc EOS" (BOS, where the
//   vocabulary adds one, before the first only); token arrays are taken as they are.
//   onEpoch(epoch, trainLoss, validationLoss, seconds) after each epoch (and its checkpoint);
//   an exception it throws stops the training there. onStep(epoch, train,
//   step, steps, runningLoss, seconds) after each optimizer step or validation window.
// Returns { contextSize, trainWindows, validationWindows, tensors, parameters, initialValidationLoss,
//           epochs: [{ epoch, trainLoss, validationLoss, seconds, learningRate }] }.
Napi::Value flockTrainLora(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    auto fail = [&](const std::string& message) {
        Napi::Error::New(env, "flockTrainLora: " + message).ThrowAsJavaScriptException();
        return env.Undefined();
    };
    if (info.Length() < 1 || !info[0].IsObject()) return fail("options object expected");
    const Napi::Object o = info[0].As<Napi::Object>();
    Napi::Function onEpoch = info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
    Napi::Function onStep = info.Length() > 2 && info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();

    const std::string modelPath = optionOr<std::string>(o, "modelPath", "");
    const std::string out = optionOr<std::string>(o, "out", "");
    const std::string init = optionOr<std::string>(o, "init", "");
    if (modelPath.empty() || out.empty()) return fail("modelPath and out are required");
    const int32_t rank = (int32_t) optionOr<double>(o, "rank", 8);
    float alpha = (float) optionOr<double>(o, "alpha", rank);
    const int32_t epochs = (int32_t) optionOr<double>(o, "epochs", 1);
    const std::string checkpoint = optionOr<std::string>(o, "checkpoint", "");
    const std::string optimizerCheckpoint = optionOr<std::string>(o, "optimizerCheckpoint", "");
    const std::string initOptimizer = optionOr<std::string>(o, "initOptimizer", "");
    const int32_t startEpoch = (int32_t) optionOr<double>(o, "startEpoch", 0);
    const int32_t threads = (int32_t) optionOr<double>(o, "threads", 0);
    const uint32_t seed = (uint32_t) optionOr<double>(o, "seed", 1);
    const int32_t gpuLayers = (int32_t) optionOr<double>(o, "gpuLayers", -1);
    TrainOptimizer optimizer;
    optimizer.lr = (float) optionOr<double>(o, "learningRate", 1e-4);
    optimizer.lrMin = (float) optionOr<double>(o, "learningRateMin", optimizer.lr);
    optimizer.weightDecay = (float) optionOr<double>(o, "weightDecay", 0.0);
    optimizer.epochs = epochs;
    std::vector<std::string> modules = {"attn_q", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    if (o.Has("modules") && o.Get("modules").IsArray()) {
        const Napi::Array a = o.Get("modules").As<Napi::Array>();
        modules.clear();
        for (uint32_t i = 0; i < a.Length(); i++) modules.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
    if (rank < 1) return fail("rank must be at least 1");
    if (epochs < 0) return fail("epochs must be 0 or more");
    if (startEpoch < 0 || startEpoch > epochs) return fail("startEpoch must be between 0 and epochs");
    if (!o.Has("train") || !o.Get("train").IsArray() || !o.Has("validation") || !o.Get("validation").IsArray()) {
        return fail("train and validation document arrays are required");
    }

    TrainResources r;

    r.model = loadFrozenBase(modelPath, gpuLayers);
    if (r.model == nullptr) return fail("cannot load model " + modelPath);
    const llama_vocab* vocab = llama_model_get_vocab(r.model);

    // The adapter: an existing one to continue, or a fresh one written to a scratch file.
    const std::string arch = architectureOf(r.model);
    if (arch.empty()) return fail("the model names no architecture");
    std::string adapterPath = init;
    if (init.empty()) {
        gguf_context* meta = nullptr;
        ggml_context* metaCtx = nullptr;
        gguf_init_params gparams = {true, &metaCtx};
        meta = gguf_init_from_file(modelPath.c_str(), gparams);
        if (meta == nullptr) return fail("cannot read tensors of " + modelPath);
        std::mt19937 rng(seed);
        std::vector<LoraTensor> fresh;
        std::vector<std::string> available;
        const std::regex blockTensor(R"(^blk\.\d+\.(.+)\.weight$)");
        for (ggml_tensor* t = ggml_get_first_tensor(metaCtx); t != nullptr; t = ggml_get_next_tensor(metaCtx, t)) {
            const std::string name = t->name;
            std::smatch m;
            std::string module;
            if (std::regex_match(name, m, blockTensor)) module = m[1];
            else if (endsWith(name, ".weight")) module = name.substr(0, name.size() - 7);
            if (module.empty() || ggml_n_dims(t) != 2 || module == "token_embd") continue;
            if (std::find(available.begin(), available.end(), module) == available.end()) available.push_back(module);
            if (std::find(modules.begin(), modules.end(), module) == modules.end()) continue;
            const int64_t dIn = t->ne[0], dOut = t->ne[1];
            // PEFT's init: A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (kaiming-uniform, a = sqrt(5)), B = 0.
            std::uniform_real_distribution<float> uniform(-1.0f / std::sqrt(float(dIn)), 1.0f / std::sqrt(float(dIn)));
            LoraTensor a{name + ".lora_a", dIn, rank, std::vector<float>(size_t(dIn) * rank)};
            for (float& x : a.data) x = uniform(rng);
            LoraTensor b{name + ".lora_b", rank, dOut, std::vector<float>(size_t(rank) * dOut, 0.0f)};
            fresh.push_back(std::move(a));
            fresh.push_back(std::move(b));
        }
        gguf_free(meta);
        ggml_free(metaCtx);
        if (fresh.empty()) {
            std::string list;
            for (const auto& m : available) list += (list.empty() ? "" : ", ") + m;
            return fail("no tensor of the model matches the modules; it has: " + list);
        }
        adapterPath = out + ".init.tmp";
        std::string error;
        if (!writeAdapter(adapterPath, arch, alpha, fresh, error)) return fail(error);
        r.initFile = adapterPath;
    }
    r.adapter = llama_adapter_lora_init(r.model, adapterPath.c_str());
    if (!r.initFile.empty()) { // read whole by the loader: no longer needed
        std::remove(r.initFile.c_str());
        r.initFile.clear();
    }
    if (r.adapter == nullptr) return fail("cannot load LoRA adapter " + adapterPath + " for this model");
    if (!init.empty()) {
        char buf[64] = {0};
        alpha = llama_adapter_meta_val_str(r.adapter, "adapter.lora.alpha", buf, sizeof(buf)) >= 0 ? std::strtof(buf, nullptr) : 0.0f;
    }

    r.ctx = trainingContext(r.model, (uint32_t) optionOr<double>(o, "contextSize", 256), threads);
    if (r.ctx == nullptr) return fail("cannot create a training context");
    const int64_t n_ctx = llama_n_ctx(r.ctx);
    if (llama_n_batch(r.ctx) != n_ctx) return fail("the context's batch size differs from its length");
    float scale = 1.0f;
    llama_adapter_lora* adapters[1] = {r.adapter};
    if (llama_set_adapters_lora(r.ctx, adapters, 1, &scale) != 0) return fail("cannot set the adapter on the training context");

    // Data: train windows (stride: overlap by default half a window), validation windows disjoint.
    auto collect = [&](const char* key, std::vector<llama_token>& all, std::string& error) {
        const Napi::Array docs = o.Get(key).As<Napi::Array>();
        for (uint32_t i = 0; i < docs.Length() && error.empty(); i++) {
            const std::vector<llama_token> t = tokensOf(vocab, docs.Get(i), all.empty(), error);
            all.insert(all.end(), t.begin(), t.end());
        }
    };
    std::vector<llama_token> trainTokens, validationTokens;
    std::string error;
    collect("train", trainTokens, error);
    collect("validation", validationTokens, error);
    if (!error.empty()) return fail(error);
    const int64_t stride = std::max<int64_t>(1, (int64_t) optionOr<double>(o, "stride", double(n_ctx / 2)));
    const auto trainWindows = windowsOf(trainTokens, n_ctx, stride);
    const auto validationWindows = windowsOf(validationTokens, n_ctx, n_ctx);
    if (trainWindows.empty()) return fail("the training text has " + std::to_string(trainTokens.size()) + " tokens, fewer than one window of " + std::to_string(n_ctx + 1));
    if (validationWindows.empty()) return fail("the validation text has " + std::to_string(validationTokens.size()) + " tokens, fewer than one window of " + std::to_string(n_ctx + 1));
    std::vector<size_t> trainOrder(trainWindows.size()), validationOrder(validationWindows.size());
    for (size_t i = 0; i < trainOrder.size(); i++) trainOrder[i] = i;
    for (size_t i = 0; i < validationOrder.size(); i++) validationOrder[i] = i;
    r.validation = datasetOf(validationWindows, validationOrder, n_ctx);

    // The optimizer: only the adapter's tensors are parameters.
    TrainParams params;
    llama_opt_params lopt = {
        /*n_ctx_train     =*/ (uint32_t) n_ctx,
        /*param_filter    =*/ trainParamFilter,
        /*param_filter_ud =*/ &params,
        /*get_opt_pars    =*/ trainOptimizerParams,
        /*get_opt_pars_ud =*/ &optimizer,
        /*optimizer_type  =*/ GGML_OPT_OPTIMIZER_TYPE_ADAMW,
    };
    llama_opt_init(r.ctx, r.model, lopt);
    if (params.tensors.empty()) {
        return fail("llama_opt_init offered none of the adapter's tensors as parameters: this build lacks flock's llama-cpp-opt-lora patch (npm run build:native)");
    }
    int64_t nParams = 0;
    for (const ggml_tensor* t : params.tensors) nParams += ggml_nelements(t);
    ggml_opt_context_t opt = llama_flock_opt_context(r.ctx);
    OptimizerStart optimizerStart;
    optimizerStart.params = &params.tensors;
    if (!initOptimizer.empty()) {
        int64_t iter = 1;
        if (!readOptimizerState(initOptimizer, optimizerStart, iter, error)) return fail(error);
        ggml_opt_flock_set_iter(opt, iter);
        ggml_opt_flock_set_moments_init(opt, fillMoments, &optimizerStart);
    }

    r.resultTrain = ggml_opt_result_init();
    r.resultEval = ggml_opt_result_init();
    TrainProgress progress{env, onStep, 0};
    trainProgress = onStep.IsEmpty() ? nullptr : &progress;
    struct ClearProgress {
        ~ClearProgress() { trainProgress = nullptr; }
    } clearProgress;
    ggml_opt_epoch_callback stepCallback = onStep.IsEmpty() ? nullptr : trainEpochCallback;

    auto validate = [&]() {
        ggml_opt_result_reset(r.resultEval);
        llama_opt_epoch(r.ctx, r.validation, r.resultTrain, r.resultEval, 0, nullptr, stepCallback);
        double loss = 0, unc = 0;
        ggml_opt_result_loss(r.resultEval, &loss, &unc);
        return loss;
    };
    const double initialValidationLoss = validate();
    if (env.IsExceptionPending()) return env.Undefined();
    // The first graph built (the validation's) allocated the moments, and filled them.
    if (!initOptimizer.empty() && !optimizerStart.filled) return fail(optimizerStart.error.empty() ? "the optimizer's moments were not allocated" : optimizerStart.error);

    // The adapter's tensors as they stand, in name order.
    auto currentTensors = [&]() {
        std::vector<LoraTensor> tensors;
        for (const ggml_tensor* t : params.tensors) {
            LoraTensor lt{t->name, t->ne[0], t->ne[1], std::vector<float>(size_t(ggml_nelements(t)))};
            ggml_backend_tensor_get(t, lt.data.data(), 0, ggml_nbytes(t));
            tensors.push_back(std::move(lt));
        }
        std::sort(tensors.begin(), tensors.end(), [](const LoraTensor& a, const LoraTensor& b) { return a.name < b.name; });
        return tensors;
    };

    std::mt19937 shuffle(seed ^ 0x9e3779b9u);
    // A resumed run shuffles as the run it continues did.
    for (int32_t epoch = 0; epoch < startEpoch; epoch++) std::shuffle(trainOrder.begin(), trainOrder.end(), shuffle);
    Napi::Array epochResults = Napi::Array::New(env);
    for (int32_t epoch = startEpoch; epoch < epochs; epoch++) {
        const auto started = std::chrono::steady_clock::now();
        optimizer.epoch = epoch;
        progress.epoch = epoch;
        std::shuffle(trainOrder.begin(), trainOrder.end(), shuffle);
        if (r.train) ggml_opt_dataset_free(r.train);
        r.train = datasetOf(trainWindows, trainOrder, n_ctx);
        ggml_opt_result_reset(r.resultTrain);
        llama_opt_epoch(r.ctx, r.train, r.resultTrain, r.resultEval, (int64_t) trainWindows.size(), stepCallback, nullptr);
        if (env.IsExceptionPending()) return env.Undefined();
        double trainLoss = 0, unc = 0;
        ggml_opt_result_loss(r.resultTrain, &trainLoss, &unc);
        const double validationLoss = validate();
        if (env.IsExceptionPending()) return env.Undefined();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        Napi::Object e = Napi::Object::New(env);
        e.Set("epoch", epoch);
        e.Set("trainLoss", trainLoss);
        e.Set("validationLoss", validationLoss);
        e.Set("seconds", seconds);
        e.Set("learningRate", optimizer.current());
        epochResults.Set(epochResults.Length(), e);
        if (!optimizerCheckpoint.empty() && !writeOptimizerState(optimizerCheckpoint, opt, params.tensors, error)) return fail(error);
        if (!checkpoint.empty() && !writeAdapter(checkpoint, arch, alpha, currentTensors(), error)) return fail(error);
        if (!onEpoch.IsEmpty()) {
            onEpoch.Call({Napi::Number::New(env, epoch), Napi::Number::New(env, trainLoss), Napi::Number::New(env, validationLoss), Napi::Number::New(env, seconds)});
            if (env.IsExceptionPending()) return env.Undefined();
        }
    }

    // The trained tensors, written as an ordinary adapter.
    if (!writeAdapter(out, arch, alpha, currentTensors(), error)) return fail(error);

    Napi::Object result = Napi::Object::New(env);
    result.Set("contextSize", Napi::Number::New(env, double(n_ctx)));
    result.Set("trainWindows", Napi::Number::New(env, double(trainWindows.size())));
    result.Set("validationWindows", Napi::Number::New(env, double(validationWindows.size())));
    result.Set("trainTokens", Napi::Number::New(env, double(trainTokens.size())));
    result.Set("tensors", Napi::Number::New(env, double(params.tensors.size())));
    result.Set("parameters", Napi::Number::New(env, double(nParams)));
    result.Set("alpha", Napi::Number::New(env, alpha));
    result.Set("initialValidationLoss", Napi::Number::New(env, initialValidationLoss));
    result.Set("epochs", epochResults);
    return result;
}

// ---- PHATGOOSE gates (issue #23, item 2) ------------------------------------------------------
// An expert's LoRA stays frozen; one gate vector v per adapted module is trained, the module's
// output becoming W x + sigmoid(v . x) * scale * B A x (Muqeeth et al. 2024). flock's
// llama-cpp-opt-gates.diff gives llama.cpp's LoRA loader a gate per module (tensor
// <base weight>.gate, f32 [d_in], in the adapter file), builds the gated term in build_lora_mm,
// offers the gates to llama_opt_init's param_filter and adds sigmoid's backward to ggml. Here the
// expert is written again with zero gates beside its tensors, loaded, and the gates alone trained.

namespace {

bool gateParamFilter(const ggml_tensor* tensor, void* userdata) {
    if (!endsWith(tensor->name, ".gate")) return false; // the base and the expert's A, B stay frozen
    static_cast<TrainParams*>(userdata)->tensors.push_back(tensor);
    return true;
}

// The adapter at `src` again at `dst`, with a zero gate for every module that has none (a gate
// already in the file is kept: training continues from it). Returns the number of gates.
int writeGatedAdapter(const std::string& src, const std::string& dst, std::string& error) {
    ggml_context* data = nullptr;
    gguf_init_params params = {false, &data};
    gguf_context* in = gguf_init_from_file(src.c_str(), params);
    if (in == nullptr) {
        error = "cannot read the adapter " + src;
        return -1;
    }
    const int64_t keyType = gguf_find_key(in, "general.type");
    if (keyType < 0 || std::string(gguf_get_val_str(in, keyType)) != "adapter") {
        error = src + " is not a LoRA adapter (general.type is not adapter)";
        gguf_free(in);
        ggml_free(data);
        return -1;
    }
    gguf_context* out = gguf_init_empty();
    gguf_set_kv(out, in);
    std::vector<std::pair<std::string, int64_t>> missing; // module, input width
    for (int64_t i = 0; i < gguf_get_n_tensors(in); i++) {
        const std::string name = gguf_get_tensor_name(in, i);
        ggml_tensor* t = ggml_get_tensor(data, name.c_str());
        if (t == nullptr) continue;
        gguf_add_tensor(out, t);
        if (!endsWith(name, ".lora_a")) continue;
        const std::string module = name.substr(0, name.size() - 7);
        if (module == "token_embd.weight" || gguf_find_tensor(in, (module + ".gate").c_str()) >= 0) continue;
        missing.emplace_back(module, t->ne[0]);
    }
    size_t bytes = 1024;
    for (const auto& m : missing) bytes += ggml_tensor_overhead() + size_t(m.second) * sizeof(float) + 64;
    ggml_init_params gparams = {bytes, nullptr, false};
    ggml_context* gates = ggml_init(gparams);
    int count = 0;
    for (const auto& m : missing) {
        ggml_tensor* gate = ggml_new_tensor_1d(gates, GGML_TYPE_F32, m.second);
        ggml_set_name(gate, (m.first + ".gate").c_str());
        std::memset(gate->data, 0, ggml_nbytes(gate));
        gguf_add_tensor(out, gate);
    }
    for (int64_t i = 0; i < gguf_get_n_tensors(out); i++) count += endsWith(gguf_get_tensor_name(out, i), ".gate") ? 1 : 0;
    const bool ok = gguf_write_to_file(out, dst.c_str(), false);
    if (!ok) error = "cannot write " + dst;
    gguf_free(out);
    gguf_free(in);
    ggml_free(gates);
    ggml_free(data);
    return ok ? count : -1;
}

// A frozen base with one adapter set on a training context, and llama.cpp's optimizer over the
// tensors `filter` accepts: the gates (gated: the adapter is written again with gates first) or
// the adapter's A and B.
struct TrainSession {
    TrainResources r;
    TrainParams params;
    TrainOptimizer optimizer;
    int64_t n_ctx = 0;
    std::string arch;

    // Returns an error message, empty on success.
    std::string open(const Napi::Object& o, const std::string& adapterPath, bool gated, llama_opt_param_filter filter, ggml_opt_optimizer_type type) {
        const std::string modelPath = optionOr<std::string>(o, "modelPath", "");
        const int32_t threads = (int32_t) optionOr<double>(o, "threads", 0);
        const int32_t gpuLayers = (int32_t) optionOr<double>(o, "gpuLayers", -1);
        if (modelPath.empty() || adapterPath.empty()) return "modelPath and the adapter are required";
        r.model = loadFrozenBase(modelPath, gpuLayers);
        if (r.model == nullptr) return "cannot load model " + modelPath;
        arch = architectureOf(r.model);
        if (arch.empty()) return "the model names no architecture";

        std::string path = adapterPath;
        if (gated) {
            std::string error;
            const std::string out = optionOr<std::string>(o, "out", "");
            path = (out.empty() ? adapterPath : out) + ".gated.tmp";
            r.initFile = path; // removed on every exit
            const int gates = writeGatedAdapter(adapterPath, path, error);
            if (gates < 0) return error;
            if (gates == 0) return adapterPath + " adapts no module that can be gated";
        }
        r.adapter = llama_adapter_lora_init(r.model, path.c_str());
        if (r.adapter == nullptr) return "cannot load the LoRA adapter " + adapterPath + " for this model";

        r.ctx = trainingContext(r.model, (uint32_t) optionOr<double>(o, "contextSize", 256), threads);
        if (r.ctx == nullptr) return "cannot create a training context";
        n_ctx = llama_n_ctx(r.ctx);
        if (llama_n_batch(r.ctx) != n_ctx) return "the context's batch size differs from its length";
        float scale = (float) optionOr<double>(o, "scale", 1.0);
        llama_adapter_lora* adapters[1] = {r.adapter};
        if (llama_set_adapters_lora(r.ctx, adapters, 1, &scale) != 0) return "cannot set the adapter on the training context";

        llama_opt_params lopt = {
            /*n_ctx_train     =*/ (uint32_t) n_ctx,
            /*param_filter    =*/ filter,
            /*param_filter_ud =*/ &params,
            /*get_opt_pars    =*/ trainOptimizerParams,
            /*get_opt_pars_ud =*/ &optimizer,
            /*optimizer_type  =*/ type,
        };
        llama_opt_init(r.ctx, r.model, lopt);
        if (params.tensors.empty()) {
            return gated ? "llama_opt_init offered no gate as a parameter: this build lacks flock's llama-cpp-opt-gates patch (npm run build:native)"
                         : "llama_opt_init offered none of the adapter's tensors as parameters: this build lacks flock's llama-cpp-opt-lora patch (npm run build:native)";
        }
        std::sort(params.tensors.begin(), params.tensors.end(), [](const ggml_tensor* a, const ggml_tensor* b) { return std::strcmp(a->name, b->name) < 0; });
        r.resultTrain = ggml_opt_result_init();
        r.resultEval = ggml_opt_result_init();
        return "";
    }

    // Mean token cross-entropy over the dataset's windows, forward only.
    double evaluate(ggml_opt_dataset_t dataset, ggml_opt_epoch_callback callback = nullptr) {
        ggml_opt_result_reset(r.resultEval);
        llama_opt_epoch(r.ctx, dataset, r.resultTrain, r.resultEval, 0, nullptr, callback);
        double loss = 0, unc = 0;
        ggml_opt_result_loss(r.resultEval, &loss, &unc);
        return loss;
    }

    std::vector<float> get(const ggml_tensor* t) const {
        std::vector<float> v(size_t(ggml_nelements(t)));
        ggml_backend_tensor_get(t, v.data(), 0, ggml_nbytes(t));
        return v;
    }
    void set(const ggml_tensor* t, const std::vector<float>& v) { ggml_backend_tensor_set(const_cast<ggml_tensor*>(t), v.data(), 0, ggml_nbytes(t)); }
};

Napi::Float32Array float32Array(Napi::Env env, const std::vector<float>& v) {
    Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
    std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
    return a;
}

// Tokens of a document array, packed as flockTrainLora packs them.
std::vector<llama_token> collectTokens(const llama_vocab* vocab, const Napi::Value& value, std::string& error) {
    std::vector<llama_token> all;
    if (!value.IsArray()) {
        error = "document arrays expected";
        return all;
    }
    const Napi::Array docs = value.As<Napi::Array>();
    for (uint32_t i = 0; i < docs.Length() && error.empty(); i++) {
        const std::vector<llama_token> t = tokensOf(vocab, docs.Get(i), all.empty(), error);
        all.insert(all.end(), t.begin(), t.end());
    }
    return all;
}

} // namespace

// flockTrainGates(options, onStep?): PHATGOOSE gate training for one expert adapter on a frozen
// base with llama.cpp's optimizer (AdamW); the gates the only parameters, zeros at the start.
//   options: { modelPath, adapterPath, out? (scratch files go beside it), train: documents,
//              validation?: documents, steps? (100), learningRate? (1e-2), weightDecay? (0),
//              scale? (the adapter's scale, 1), contextSize? (256), stride?, threads?, seed?,
//              gpuLayers? }
//   Steps are training windows, one optimizer step each, drawn from shuffled passes over the
//   windows. onStep(0, train, step, steps, runningLoss, seconds) as for flockTrainLora.
// Returns { gates: { [module]: Float32Array }, steps, contextSize, trainWindows, trainTokens,
//           parameters, trainLoss, initialValidationLoss?, validationLoss?, seconds }.
Napi::Value flockTrainGates(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    auto fail = [&](const std::string& message) {
        Napi::Error::New(env, "flockTrainGates: " + message).ThrowAsJavaScriptException();
        return env.Undefined();
    };
    if (info.Length() < 1 || !info[0].IsObject()) return fail("options object expected");
    const Napi::Object o = info[0].As<Napi::Object>();
    Napi::Function onStep = info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
    const int64_t steps = (int64_t) optionOr<double>(o, "steps", 100);
    const uint32_t seed = (uint32_t) optionOr<double>(o, "seed", 1);
    if (steps < 0) return fail("steps must be 0 or more");
    if (!o.Has("train") || !o.Get("train").IsArray()) return fail("a train document array is required");

    TrainSession s;
    s.optimizer.lr = s.optimizer.lrMin = (float) optionOr<double>(o, "learningRate", 1e-2);
    s.optimizer.weightDecay = (float) optionOr<double>(o, "weightDecay", 0.0);
    const std::string optimizerName = optionOr<std::string>(o, "optimizer", "adamw");
    if (optimizerName != "adamw" && optimizerName != "sgd") return fail("optimizer is adamw or sgd");
    const ggml_opt_optimizer_type optimizerType = optimizerName == "sgd" ? GGML_OPT_OPTIMIZER_TYPE_SGD : GGML_OPT_OPTIMIZER_TYPE_ADAMW;
    std::string error = s.open(o, optionOr<std::string>(o, "adapterPath", ""), true, gateParamFilter, optimizerType);
    if (!error.empty()) return fail(error);
    const llama_vocab* vocab = llama_model_get_vocab(s.r.model);
    const int64_t n_ctx = s.n_ctx;

    const std::vector<llama_token> trainTokens = collectTokens(vocab, o.Get("train"), error);
    if (!error.empty()) return fail(error);
    const int64_t stride = std::max<int64_t>(1, (int64_t) optionOr<double>(o, "stride", double(n_ctx / 2)));
    const auto trainWindows = windowsOf(trainTokens, n_ctx, stride);
    if (trainWindows.empty()) return fail("the training text has " + std::to_string(trainTokens.size()) + " tokens, fewer than one window of " + std::to_string(n_ctx + 1));
    const bool hasValidation = o.Has("validation") && o.Get("validation").IsArray() && o.Get("validation").As<Napi::Array>().Length() > 0;
    if (hasValidation) {
        const std::vector<llama_token> validationTokens = collectTokens(vocab, o.Get("validation"), error);
        if (!error.empty()) return fail(error);
        const auto windows = windowsOf(validationTokens, n_ctx, n_ctx);
        if (windows.empty()) return fail("the validation text has " + std::to_string(validationTokens.size()) + " tokens, fewer than one window of " + std::to_string(n_ctx + 1));
        std::vector<size_t> order(windows.size());
        for (size_t i = 0; i < order.size(); i++) order[i] = i;
        s.r.validation = datasetOf(windows, order, n_ctx);
    }

    // `steps` windows: shuffled passes over the training windows, as many as it takes.
    std::mt19937 shuffle(seed ^ 0x9e3779b9u);
    std::vector<std::vector<llama_token>> stepWindows;
    while (int64_t(stepWindows.size()) < steps) {
        std::vector<size_t> pass(trainWindows.size());
        for (size_t i = 0; i < pass.size(); i++) pass[i] = i;
        std::shuffle(pass.begin(), pass.end(), shuffle);
        for (size_t i = 0; i < pass.size() && int64_t(stepWindows.size()) < steps; i++) stepWindows.push_back(trainWindows[pass[i]]);
    }
    std::vector<size_t> order(stepWindows.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;

    TrainProgress progress{env, onStep, 0};
    trainProgress = onStep.IsEmpty() ? nullptr : &progress;
    struct ClearProgress {
        ~ClearProgress() { trainProgress = nullptr; }
    } clearProgress;
    const ggml_opt_epoch_callback stepCallback = onStep.IsEmpty() ? nullptr : trainEpochCallback;

    Napi::Object result = Napi::Object::New(env);
    if (s.r.validation) {
        result.Set("initialValidationLoss", s.evaluate(s.r.validation));
        if (env.IsExceptionPending()) return env.Undefined();
    }
    const auto started = std::chrono::steady_clock::now();
    double trainLoss = 0;
    if (steps > 0) {
        s.r.train = datasetOf(stepWindows, order, n_ctx);
        ggml_opt_result_reset(s.r.resultTrain);
        llama_opt_epoch(s.r.ctx, s.r.train, s.r.resultTrain, s.r.resultEval, steps, stepCallback, nullptr);
        if (env.IsExceptionPending()) return env.Undefined();
        double unc = 0;
        ggml_opt_result_loss(s.r.resultTrain, &trainLoss, &unc);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (s.r.validation) {
        result.Set("validationLoss", s.evaluate(s.r.validation));
        if (env.IsExceptionPending()) return env.Undefined();
    }

    Napi::Object gates = Napi::Object::New(env);
    int64_t parameters = 0;
    for (const ggml_tensor* t : s.params.tensors) {
        const std::string name = t->name;
        gates.Set(name.substr(0, name.size() - 5), float32Array(env, s.get(t)));
        parameters += ggml_nelements(t);
    }
    result.Set("gates", gates);
    result.Set("steps", Napi::Number::New(env, double(steps)));
    result.Set("contextSize", Napi::Number::New(env, double(n_ctx)));
    result.Set("trainWindows", Napi::Number::New(env, double(trainWindows.size())));
    result.Set("trainTokens", Napi::Number::New(env, double(trainTokens.size())));
    result.Set("parameters", Napi::Number::New(env, double(parameters)));
    result.Set("trainLoss", Napi::Number::New(env, trainLoss));
    result.Set("seconds", Napi::Number::New(env, seconds));
    return result;
}

// flockTrainGradientCheck(options): the gradient llama.cpp's training graph computes, against
// central finite differences of the loss, for the gates (of a gated copy of the adapter) or the
// adapter's A and B. The analytic gradient is read from one plain SGD step (learning rate 1, no
// weight decay: delta = -g); the parameters are then restored and, for the `elements` entries of
// largest |g| in each of the first `tensors` parameter tensors (in name order), the loss is
// evaluated at theta +- epsilon.
//   options: { modelPath, adapterPath, params: "gates" | "lora", tokens: Uint32Array (a window of
//              contextSize + 1), contextSize? (256), epsilon? (1e-2), elements? (2), tensors? (all),
//              threads?, gpuLayers?, scale? }
// Returns { loss, lossAfterRestore, parameters, checks: [{ tensor, index, analytic, numeric }] }.
Napi::Value flockTrainGradientCheck(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    auto fail = [&](const std::string& message) {
        Napi::Error::New(env, "flockTrainGradientCheck: " + message).ThrowAsJavaScriptException();
        return env.Undefined();
    };
    if (info.Length() < 1 || !info[0].IsObject()) return fail("options object expected");
    const Napi::Object o = info[0].As<Napi::Object>();
    const std::string which = optionOr<std::string>(o, "params", "gates");
    if (which != "gates" && which != "lora") return fail("params is gates or lora");
    const bool gated = which == "gates";
    const float epsilon = (float) optionOr<double>(o, "epsilon", 1e-2);
    const int64_t elements = std::max<int64_t>(1, (int64_t) optionOr<double>(o, "elements", 2));
    const int64_t maxTensors = (int64_t) optionOr<double>(o, "tensors", 1e9);
    if (!o.Has("tokens") || !o.Get("tokens").IsTypedArray()) return fail("tokens (Uint32Array) are required");

    TrainSession s;
    s.optimizer.lr = s.optimizer.lrMin = 1.0f;
    s.optimizer.weightDecay = 0.0f;
    std::string error = s.open(o, optionOr<std::string>(o, "adapterPath", ""), gated, gated ? gateParamFilter : trainParamFilter, GGML_OPT_OPTIMIZER_TYPE_SGD);
    if (!error.empty()) return fail(error);
    const std::vector<llama_token> tokens = tokensOf(llama_model_get_vocab(s.r.model), o.Get("tokens"), false, error);
    if (!error.empty()) return fail(error);
    if (int64_t(tokens.size()) < s.n_ctx + 1) return fail("tokens: a window of " + std::to_string(s.n_ctx + 1) + " tokens is needed");
    const std::vector<std::vector<llama_token>> window = {std::vector<llama_token>(tokens.begin(), tokens.begin() + s.n_ctx + 1)};
    s.r.train = datasetOf(window, {0}, s.n_ctx);

    std::vector<std::vector<float>> before;
    for (const ggml_tensor* t : s.params.tensors) before.push_back(s.get(t));
    const double loss = s.evaluate(s.r.train);
    llama_opt_epoch(s.r.ctx, s.r.train, s.r.resultTrain, s.r.resultEval, 1, nullptr, nullptr); // one SGD step
    std::vector<std::vector<float>> gradients;
    for (size_t k = 0; k < s.params.tensors.size(); k++) {
        std::vector<float> g = s.get(s.params.tensors[k]);
        for (size_t i = 0; i < g.size(); i++) g[i] = before[k][i] - g[i];
        gradients.push_back(std::move(g));
        s.set(s.params.tensors[k], before[k]);
    }
    const double lossAfterRestore = s.evaluate(s.r.train);

    Napi::Array checks = Napi::Array::New(env);
    int64_t parameters = 0;
    for (size_t k = 0; k < s.params.tensors.size(); k++) {
        parameters += ggml_nelements(s.params.tensors[k]);
        if (int64_t(k) >= maxTensors) continue;
        const std::vector<float>& g = gradients[k];
        std::vector<size_t> idx(g.size());
        for (size_t i = 0; i < idx.size(); i++) idx[i] = i;
        const size_t n = std::min<size_t>(size_t(elements), idx.size());
        std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](size_t a, size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
        for (size_t j = 0; j < n; j++) {
            std::vector<float> theta = before[k];
            theta[idx[j]] = before[k][idx[j]] + epsilon;
            s.set(s.params.tensors[k], theta);
            const double plus = s.evaluate(s.r.train);
            theta[idx[j]] = before[k][idx[j]] - epsilon;
            s.set(s.params.tensors[k], theta);
            const double minus = s.evaluate(s.r.train);
            s.set(s.params.tensors[k], before[k]);
            Napi::Object c = Napi::Object::New(env);
            c.Set("tensor", s.params.tensors[k]->name);
            c.Set("index", Napi::Number::New(env, double(idx[j])));
            c.Set("analytic", Napi::Number::New(env, g[idx[j]]));
            c.Set("numeric", Napi::Number::New(env, (plus - minus) / (2.0 * epsilon)));
            checks.Set(checks.Length(), c);
        }
    }
    Napi::Object result = Napi::Object::New(env);
    result.Set("loss", loss);
    result.Set("lossAfterRestore", lossAfterRestore);
    result.Set("parameters", Napi::Number::New(env, double(parameters)));
    result.Set("checks", checks);
    return result;
}
