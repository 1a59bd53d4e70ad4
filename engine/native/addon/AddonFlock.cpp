// flock's additions to node-llama-cpp's addon (compiled with it; registered on AddonContext by
// patches/addon-context.diff, and the functions of surface.ts's ADDON_FUNCTIONS on the addon's
// exports by patches/addon-exports.diff). Reached from TypeScript only through engine/native.ts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <strings.h>
#include <utility>
#include <vector>

#include "ggml.h"
#include "ggml-backend.h"
#include "llama.h"
#include "napi.h"
#include "AddonContext.h"
#include "AddonModel.h"

// flockGetLogits(batchLogitIndex, into?): the raw next-token logits llama.cpp computed for that
// batch position, copied into a Float32Array of the vocabulary's size (`into`, where given). Synchronous: a memcpy, read
// before the next decode overwrites them.
Napi::Value AddonContext::FlockGetLogits(const Napi::CallbackInfo& info) {
    if (disposed) {
        Napi::Error::New(info.Env(), "Context is disposed").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int32_t batchLogitIndex = info[0].As<Napi::Number>().Int32Value();
    const float* logits = llama_get_logits_ith(ctx, batchLogitIndex);
    if (logits == nullptr) {
        Napi::Error::New(info.Env(), "No logits for batch position " + std::to_string(batchLogitIndex)).ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int32_t n_vocab = llama_vocab_n_tokens(model->vocab);
    // A spare array of the vocabulary's size is overwritten and returned (no allocation).
    if (info.Length() > 1 && info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_float32_array &&
        info[1].As<Napi::TypedArray>().ElementLength() == size_t(n_vocab)) {
        Napi::Float32Array into = info[1].As<Napi::Float32Array>();
        std::memcpy(into.Data(), logits, sizeof(float) * n_vocab);
        return into;
    }
    Napi::Float32Array result = Napi::Float32Array::New(info.Env(), n_vocab);
    std::memcpy(result.Data(), logits, sizeof(float) * n_vocab);
    return result;
}

// flockFusionGrid(strong, base, experts[], step, steps, pruneMargin): the dynamic-logit-fusion
// objective at every grid point α_k = k·step for every expert (decoding/fusion/solver.ts has
// the derivation; this is the same computation, compiled). Returns a Float64Array holding
// experts × (steps + 1) objectives, then each expert's movement KL(Q_t‖Q) + KL(Q‖Q_t).
namespace {

struct Softmax {
    std::vector<double> p;
    double lse = 0;
};

Softmax softmaxOf(const float* logits, size_t n) {
    Softmax out;
    out.p.resize(n);
    float max = -INFINITY;
    for (size_t i = 0; i < n; i++) max = logits[i] > max ? logits[i] : max;
    double total = 0;
    for (size_t i = 0; i < n; i++) total += out.p[i] = std::exp(double(logits[i]) - max);
    for (size_t i = 0; i < n; i++) out.p[i] /= total;
    out.lse = max + std::log(total);
    return out;
}

inline double shiftOf(const float* expert, const float* base, size_t i) {
    const double d = double(expert[i]) - double(base[i]);
    return std::isfinite(d) ? d : 0.0;
}

// z[k] = Σ w_i f_i^k and zd[k] = Σ w_i f_i^k d_i for k = 0..steps. Four tokens advance
// together as one vector (GCC/Clang vector extensions: two SSE2 halves on the baseline, one
// AVX2 register in the clone picked at load time where the toolchain supports it).
typedef double Vec4 __attribute__((vector_size(32)));
constexpr int MAX_GRID_POINTS = 256;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
void accumulateGrid(const double* w0, const double* f0, const double* d0, size_t m, int steps, double* z, double* zd) {
    const int K = steps + 1;
    // On the stack with explicit alignment: the AVX2 clone stores these with aligned moves.
    alignas(32) Vec4 zl[MAX_GRID_POINTS];
    alignas(32) Vec4 zdl[MAX_GRID_POINTS];
    for (int k = 0; k < K; k++) zl[k] = zdl[k] = Vec4{0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        Vec4 w = {w0[i], w0[i + 1], w0[i + 2], w0[i + 3]};
        const Vec4 f = {f0[i], f0[i + 1], f0[i + 2], f0[i + 3]};
        const Vec4 d = {d0[i], d0[i + 1], d0[i + 2], d0[i + 3]};
        for (int k = 0; k < K; k++) {
            zl[k] += w;
            zdl[k] += w * d;
            w *= f;
        }
    }
    for (int k = 0; k < K; k++) {
        z[k] = zl[k][0] + zl[k][1] + zl[k][2] + zl[k][3];
        zd[k] = zdl[k][0] + zdl[k][1] + zdl[k][2] + zdl[k][3];
    }
    for (; i < m; i++) {
        double w = w0[i];
        for (int k = 0; k < K; k++) {
            z[k] += w;
            zd[k] += w * d0[i];
            w *= f0[i];
        }
    }
}

}  // namespace

Napi::Value AddonContext::FlockFusionGrid(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    const Napi::Float32Array strongArray = info[0].As<Napi::Float32Array>();
    const Napi::Float32Array baseArray = info[1].As<Napi::Float32Array>();
    const Napi::Array expertsArray = info[2].As<Napi::Array>();
    const double step = info[3].As<Napi::Number>().DoubleValue();
    const int32_t steps = info[4].As<Napi::Number>().Int32Value();
    const double pruneMargin = info[5].As<Napi::Number>().DoubleValue();
    const size_t n = strongArray.ElementLength();
    const uint32_t expertCount = expertsArray.Length();
    if (baseArray.ElementLength() != n || steps < 0 || steps >= MAX_GRID_POINTS) {
        Napi::Error::New(env, "flockFusionGrid: mismatched inputs").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const float* strong = strongArray.Data();
    const float* base = baseArray.Data();

    size_t top = 0;
    for (size_t i = 1; i < n; i++) if (strong[i] > strong[top]) top = i;
    std::vector<double> weight(n);
    for (size_t i = 0; i < n; i++) weight[i] = std::exp(double(strong[i]) - strong[top]);
    const Softmax baseSoftmax = softmaxOf(base, n);
    const double gridMax = step * steps;

    Napi::Float64Array result = Napi::Float64Array::New(env, expertCount * (steps + 1) + expertCount);
    std::vector<double> z(steps + 1), zd(steps + 1), keptW(n), keptF(n), keptD(n);
    for (uint32_t e = 0; e < expertCount; e++) {
        const Napi::Float32Array expertArray = expertsArray.Get(e).As<Napi::Float32Array>();
        if (expertArray.ElementLength() != n) {
            Napi::Error::New(env, "flockFusionGrid: an expert's vocabulary differs").ThrowAsJavaScriptException();
            return env.Undefined();
        }
        const float* expert = expertArray.Data();
        // One pass: the shift d, the grid factor exp(step·d), the expert's mass relative to the
        // base (exp(e − max_b) = exp(b − max_b)·exp(d)) and the moments both KL terms need, and
        // the tokens that matter at some α on the grid, compacted for the grid pass.
        const double floor = strong[top] + gridMax * std::min(0.0, shiftOf(expert, base, top)) - pruneMargin;
        double expertMass = 0, expertMoment = 0, baseMeanD = 0;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            const double di = shiftOf(expert, base, i);
            const double pb = baseSoftmax.p[i];
            const double ped = pb * std::exp(di);
            expertMass += ped;
            expertMoment += ped * di;
            baseMeanD += pb * di;
            if (strong[i] + gridMax * (di > 0 ? di : 0) >= floor) {
                keptW[m] = weight[i];
                keptF[m] = std::exp(step * di);
                keptD[m] = di;
                m++;
            }
        }
        const double logMassRatio = std::log(expertMass);  // lse_expert − lse_base
        const double klExpertBase = expertMoment / expertMass - logMassRatio;
        const double klBaseExpert = -baseMeanD + logMassRatio;

        std::fill(z.begin(), z.end(), 0.0);
        std::fill(zd.begin(), zd.end(), 0.0);
        accumulateGrid(keptW.data(), keptF.data(), keptD.data(), m, steps, z.data(), zd.data());

        const double meanD0 = zd[0] / z[0];
        for (int k = 0; k <= steps; k++) {
            const double alpha = k * step;
            const double logRatio = std::log(z[k] / z[0]);
            const double klFusedStrong = alpha * (zd[k] / z[k]) - logRatio;
            const double klStrongFused = logRatio - alpha * meanD0;
            const double a = klFusedStrong - klExpertBase;
            const double b = klStrongFused - klBaseExpert;
            result[e * (steps + 1) + k] = a * a + b * b;
        }
        result[expertCount * (steps + 1) + e] = klExpertBase + klBaseExpert;
    }
    return result;
}

// flockEnableHiddenStates(): from now on this context also extracts, for the tokens it outputs
// logits for, the final hidden state (the output norm's result, which feeds output.weight).
// Needs llama.cpp patched with llama_set_embeddings_outputs_only (patches/llama-cpp-*.diff):
// plain embeddings mode would output every token of every batch.
Napi::Value AddonContext::FlockEnableHiddenStates(const Napi::CallbackInfo& info) {
    if (disposed) {
        Napi::Error::New(info.Env(), "Context is disposed").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    llama_set_embeddings_outputs_only(ctx, true);
    llama_set_embeddings(ctx, true);
    return info.Env().Undefined();
}

// flockGetHiddenState(batchLogitIndex): that position's final hidden state as a Float32Array.
Napi::Value AddonContext::FlockGetHiddenState(const Napi::CallbackInfo& info) {
    if (disposed) {
        Napi::Error::New(info.Env(), "Context is disposed").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int32_t batchLogitIndex = info[0].As<Napi::Number>().Int32Value();
    const float* hidden = llama_get_embeddings_ith(ctx, batchLogitIndex);
    if (hidden == nullptr) {
        Napi::Error::New(info.Env(), "No hidden state for batch position " + std::to_string(batchLogitIndex)).ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int32_t n_embd = llama_model_n_embd_out(model->model);
    Napi::Float32Array result = Napi::Float32Array::New(info.Env(), n_embd);
    std::memcpy(result.Data(), hidden, sizeof(float) * n_embd);
    return result;
}

// flockSetRoutedLoras(paths[], scales[], modules[], gates[], method, topK, temperature, trace):
// routed LoRA over these adapter files on this context (see llama_flock_set_routed_loras).
// gates[m] is a Float32Array of n_adapters × d_in values for module m. An empty paths list
// clears routing. With trace, flockGetRoutingTrace reads each output token's routing.
// The adapter files are read for this call and freed after it (below); nothing stays loaded.
Napi::Value AddonContext::FlockSetRoutedLoras(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (disposed) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const Napi::Array paths = info[0].As<Napi::Array>();
    const Napi::Array scales = info[1].As<Napi::Array>();
    const Napi::Array modules = info[2].As<Napi::Array>();
    const Napi::Array gates = info[3].As<Napi::Array>();
    const int32_t method = info[4].As<Napi::Number>().Int32Value();
    const int32_t topK = info[5].As<Napi::Number>().Int32Value();
    const float temperature = info[6].As<Napi::Number>().FloatValue();
    const bool trace = info.Length() > 7 && info[7].As<Napi::Boolean>().Value();

    if (paths.Length() == 0) {
        llama_flock_clear_routed_loras(ctx);
        return env.Undefined();
    }

    // The routing copies every adapter's A and B into stacked tensors of its own, so the adapters
    // are loaded for this call and freed after it: nothing stays loaded for an expert that is
    // later removed, and a file replaced at the same path is read afresh.
    std::vector<llama_adapter_lora*> adapters;
    std::vector<float> adapterScales;
    struct FreeAdapters {
        std::vector<llama_adapter_lora*>& adapters;
        ~FreeAdapters() {
            for (llama_adapter_lora* adapter : adapters) llama_adapter_lora_free(adapter);
        }
    } freeAdapters{adapters};
    for (uint32_t i = 0; i < paths.Length(); i++) {
        const std::string path = paths.Get(i).As<Napi::String>().Utf8Value();
        llama_adapter_lora* adapter = llama_adapter_lora_init(model->model, path.c_str());
        if (adapter == nullptr) {
            Napi::Error::New(env, "cannot load LoRA adapter " + path + " for this model").ThrowAsJavaScriptException();
            return env.Undefined();
        }
        adapters.push_back(adapter);
        adapterScales.push_back(scales.Get(i).As<Napi::Number>().FloatValue());
    }

    std::vector<std::string> names;
    std::vector<const float*> gatePointers;
    std::vector<Napi::Float32Array> keepAlive;
    for (uint32_t m = 0; m < modules.Length(); m++) {
        names.push_back(modules.Get(m).As<Napi::String>().Utf8Value());
        keepAlive.push_back(gates.Get(m).As<Napi::Float32Array>());
        gatePointers.push_back(keepAlive.back().Data());
    }
    std::vector<const char*> namePointers;
    for (const auto& name : names) namePointers.push_back(name.c_str());

    const int32_t status = llama_flock_set_routed_loras(
        ctx, adapters.data(), adapterScales.data(), (int32_t) adapters.size(),
        namePointers.data(), gatePointers.data(), (int32_t) namePointers.size(),
        method == 1 ? LLAMA_FLOCK_ROUTING_ARROW : LLAMA_FLOCK_ROUTING_PHATGOOSE, topK, temperature, trace);
    if (status != 0) {
        Napi::Error::New(env, llama_flock_routing_last_error()).ThrowAsJavaScriptException();
    }
    return env.Undefined();
}

// flockGetRoutingTraceModules(): the routed modules the last decode traced, in graph order.
Napi::Value AddonContext::FlockGetRoutingTraceModules(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (disposed) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const int32_t n = llama_flock_routing_trace_n_modules(ctx);
    Napi::Array names = Napi::Array::New(env, n);
    for (int32_t j = 0; j < n; j++) names.Set(j, Napi::String::New(env, llama_flock_routing_trace_module(ctx, j)));
    return names;
}

// flockGetRoutingTrace(batchLogitIndex, nAdapters): that output token's routing, n_modules rows
// of nAdapters probabilities (softmax over the adapters, before the top-k), or null.
Napi::Value AddonContext::FlockGetRoutingTrace(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (disposed) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const int32_t batchLogitIndex = info[0].As<Napi::Number>().Int32Value();
    const int32_t nAdapters = info[1].As<Napi::Number>().Int32Value();
    const float* trace = llama_flock_get_routing_trace_ith(ctx, batchLogitIndex);
    if (trace == nullptr) return env.Null();
    const size_t n = (size_t) llama_flock_routing_trace_n_modules(ctx) * nAdapters;
    Napi::Float32Array result = Napi::Float32Array::New(env, n);
    std::memcpy(result.Data(), trace, sizeof(float) * n);
    return result;
}

// flockCheckWeightType(typeName, threads): one matrix product with weights of that ggml type in
// every buffer type llama.cpp could place them in — each device's own and the CPU's extra ones
// (repacked layouts, AMX) — against a reference computed in double from the dequantized weights.
// Each case is announced on stderr before it runs, so that the parent of a child process that
// dies on an instruction its CPU traps on (engine/weight-check.ts) can name the case. Returns
// [{device, buffer, batch, supported, error}], error = ‖y − ref‖ / ‖ref‖.
//
// Test hook: FLOCK_TEST_TRAP_WEIGHT_CHECK="TYPE@BUFFER" executes an illegal instruction where
// that case would run (the trap an AMX-advertising VM gives), to test the parent's handling.
namespace {

struct WeightCheckCase {
    std::string device;
    std::string buffer;
    int64_t batch;
    bool supported;
    double error;
};

float checkValue(uint64_t & state) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return float((state >> 40) & 0xFFFFFF) / float(0x800000) - 1.0f; // [-1, 1)
}

bool trapRequested(const std::string & type, const std::string & buffer) {
    const char * hook = std::getenv("FLOCK_TEST_TRAP_WEIGHT_CHECK");
    return hook != nullptr && strcasecmp(hook, (type + "@" + buffer).c_str()) == 0;
}

} // namespace

Napi::Value flockCheckWeightType(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string name = info[0].As<Napi::String>().Utf8Value();
    const int threads = info.Length() > 1 ? info[1].As<Napi::Number>().Int32Value() : 1;

    ggml_type type = GGML_TYPE_COUNT;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const ggml_type_traits * traits = ggml_get_type_traits((ggml_type) t);
        if (traits->type_name != nullptr && traits->blck_size > 0 && strcasecmp(traits->type_name, name.c_str()) == 0) {
            type = (ggml_type) t;
        }
    }
    if (type == GGML_TYPE_COUNT || ggml_get_type_traits(type)->to_float == nullptr && type != GGML_TYPE_F32) {
        Napi::Error::New(env, "unknown or unsupported ggml type " + name).ThrowAsJavaScriptException();
        return env.Undefined();
    }

    // 512 inputs: a whole number of blocks of every type (256 for k-quants); 64 output rows.
    const int64_t K = 512, N = 64;
    uint64_t state = 42;
    std::vector<float> w(K * N);
    for (float & v : w) v = checkValue(state);
    std::vector<uint8_t> stored(ggml_row_size(type, K) * N);
    std::vector<float> importance(K, 1.0f);
    ggml_quantize_chunk(type, w.data(), stored.data(), 0, N, K, ggml_quantize_requires_imatrix(type) ? importance.data() : nullptr);
    std::vector<float> dequantized(K * N);
    if (type == GGML_TYPE_F32) std::memcpy(dequantized.data(), stored.data(), stored.size());
    else ggml_get_type_traits(type)->to_float(stored.data(), dequantized.data(), K * N);

    std::vector<WeightCheckCase> cases;
    for (size_t d = 0; d < ggml_backend_dev_count(); d++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(d);
        const auto devType = ggml_backend_dev_type(dev);
        if (devType != GGML_BACKEND_DEVICE_TYPE_CPU && devType != GGML_BACKEND_DEVICE_TYPE_GPU && devType != GGML_BACKEND_DEVICE_TYPE_IGPU) continue;
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);

        std::vector<ggml_backend_buffer_type_t> bufts;
        if (devType == GGML_BACKEND_DEVICE_TYPE_CPU) {
            auto extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
            for (ggml_backend_buffer_type_t * b = extra ? extra(dev) : nullptr; b && *b; b++) bufts.push_back(*b);
        }
        bufts.push_back(ggml_backend_dev_buffer_type(dev));

        ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
        if (backend == nullptr) continue;
        auto setThreads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
        if (setThreads) setThreads(backend, std::max(1, threads));

        for (ggml_backend_buffer_type_t buft : bufts) {
            const std::string bufName = ggml_backend_buft_name(buft);
            for (int64_t M : {int64_t(1), int64_t(8)}) {
                WeightCheckCase result{ggml_backend_dev_name(dev), bufName, M, false, 0.0};
                ggml_init_params params = { 4 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
                ggml_context * wctx = ggml_init(params);
                ggml_context * xctx = ggml_init(params);
                ggml_tensor * W = ggml_new_tensor_2d(wctx, type, K, N);
                ggml_tensor * X = ggml_new_tensor_2d(xctx, GGML_TYPE_F32, K, M);
                ggml_tensor * Y = ggml_mul_mat(xctx, W, X);
                ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
                ggml_backend_buffer_t xbuf = ggml_backend_alloc_ctx_tensors_from_buft(xctx, ggml_backend_dev_buffer_type(dev));
                if (wbuf && xbuf && ggml_backend_dev_supports_op(dev, Y)) {
                    result.supported = true;
                    std::fprintf(stderr, "flock-weight-check: %s %s %s batch %lld\n", name.c_str(), result.device.c_str(), bufName.c_str(), (long long) M);
                    std::fflush(stderr);
                    if (trapRequested(name, bufName)) __builtin_trap();
                    std::vector<float> x(K * M);
                    for (float & v : x) v = checkValue(state);
                    ggml_backend_tensor_set(W, stored.data(), 0, stored.size()); // extra buffer types repack here
                    ggml_backend_tensor_set(X, x.data(), 0, x.size() * sizeof(float));
                    ggml_cgraph * graph = ggml_new_graph(xctx);
                    ggml_build_forward_expand(graph, Y);
                    if (ggml_backend_graph_compute(backend, graph) == GGML_STATUS_SUCCESS) {
                        std::vector<float> y(N * M);
                        ggml_backend_tensor_get(Y, y.data(), 0, y.size() * sizeof(float));
                        double diff = 0, norm = 0;
                        for (int64_t m = 0; m < M; m++) {
                            for (int64_t n = 0; n < N; n++) {
                                double ref = 0;
                                for (int64_t k = 0; k < K; k++) ref += double(dequantized[n * K + k]) * x[m * K + k];
                                diff += (y[m * N + n] - ref) * (y[m * N + n] - ref);
                                norm += ref * ref;
                            }
                        }
                        result.error = std::sqrt(diff / std::max(norm, 1e-30));
                    } else {
                        result.error = INFINITY;
                    }
                }
                if (wbuf) ggml_backend_buffer_free(wbuf);
                if (xbuf) ggml_backend_buffer_free(xbuf);
                ggml_free(wctx);
                ggml_free(xctx);
                cases.push_back(result);
            }
        }
        ggml_backend_free(backend);
    }

    Napi::Array out = Napi::Array::New(env, cases.size());
    for (size_t i = 0; i < cases.size(); i++) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("device", cases[i].device);
        o.Set("buffer", cases[i].buffer);
        o.Set("batch", Napi::Number::New(env, double(cases[i].batch)));
        o.Set("supported", cases[i].supported);
        o.Set("error", cases[i].error);
        out[i] = o;
    }
    return out;
}

