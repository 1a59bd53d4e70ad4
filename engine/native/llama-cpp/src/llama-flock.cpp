#include "llama-flock.h"

#include "llama-adapter.h"
#include "llama-context.h"
#include "llama-impl.h"
#include "llama-model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

ggml_tensor * llama_flock_build_routed(ggml_context * ctx0, const llama_flock_routing & routing, const llama_flock_routed_module & module, ggml_tensor * cur, ggml_tensor ** probs_out) {
    const int64_t d_in     = module.a->ne[0];
    const int64_t d_out    = module.b->ne[1];
    const int64_t n_adapt  = routing.n_adapters;
    const int64_t n_tokens = ggml_nelements(cur) / d_in;
    const int64_t k        = std::min<int64_t>(routing.top_k, n_adapt);

    ggml_tensor * x = ggml_reshape_2d(ctx0, ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur), d_in, n_tokens);

    ggml_tensor * scores = routing.method == LLAMA_FLOCK_ROUTING_PHATGOOSE
        ? ggml_mul_mat(ctx0, module.gates, ggml_norm(ctx0, x, 1e-5f))
        : ggml_abs(ctx0, ggml_mul_mat(ctx0, module.gates, x)); // [n_adapters, n_tokens]

    ggml_tensor * probs = ggml_soft_max_ext(ctx0, scores, nullptr, 1.0f / routing.temperature, 0.0f);
    if (routing.trace && probs_out) {
        ggml_set_output(probs);
        *probs_out = probs;
    }
    ggml_tensor * ids   = ggml_argsort_top_k(ctx0, probs, (int) k); // [k, n_tokens]

    // w = the top-k probabilities, renormalised (= softmax over the top k)
    ggml_tensor * w = ggml_get_rows(ctx0, ggml_reshape_3d(ctx0, probs, 1, n_adapt, n_tokens), ids); // [1, k, n_tokens]
    w = ggml_reshape_2d(ctx0, w, k, n_tokens);
    w = ggml_div(ctx0, w, ggml_sum_rows(ctx0, w));
    w = ggml_reshape_3d(ctx0, w, 1, k, n_tokens);

    ggml_tensor * ax = ggml_mul_mat_id(ctx0, module.a, ggml_reshape_3d(ctx0, x, d_in, 1, n_tokens), ids); // [rank, k, n_tokens]
    ggml_tensor * y  = ggml_mul_mat_id(ctx0, module.b, ax, ids);                                           // [d_out, k, n_tokens]
    y = ggml_mul(ctx0, y, w);

    ggml_tensor * out = ggml_view_2d(ctx0, y, d_out, n_tokens, y->nb[2], 0);
    for (int64_t i = 1; i < k; i++) {
        out = ggml_add(ctx0, out, ggml_view_2d(ctx0, y, d_out, n_tokens, y->nb[2], i * y->nb[1]));
    }
    return k == 1 ? ggml_cont(ctx0, out) : out;
}

namespace {

// A tensor's values as f32 on the host (adapters are stored f32 or f16).
std::vector<float> host_f32(const ggml_tensor * t) {
    const int64_t n = ggml_nelements(t);
    std::vector<float> out(n);
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_get(t, out.data(), 0, n * sizeof(float));
    } else if (t->type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> tmp(n);
        ggml_backend_tensor_get(t, tmp.data(), 0, n * sizeof(ggml_fp16_t));
        ggml_fp16_to_fp32_row(tmp.data(), out.data(), n);
    } else {
        throw std::runtime_error(std::string("routed LoRA: adapter tensor ") + t->name + " has unsupported type " + ggml_type_name(t->type));
    }
    return out;
}

void standardise(float * v, int64_t n) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += v[i];
    mean /= n;
    for (int64_t i = 0; i < n; i++) var += (v[i] - mean) * (v[i] - mean);
    var /= n;
    const double inv = 1.0 / std::sqrt(var + 1e-5);
    for (int64_t i = 0; i < n; i++) v[i] = float((v[i] - mean) * inv);
}

// Builds the module's routed term over a one-token input and asks the device that holds the
// stacked adapters whether it runs every op of it: what it cannot run is refused here, with the
// reason, instead of aborting the process in the scheduler at the first decode.
// FLOCK_TEST_ROUTED_UNSUPPORTED_OP names an op to report as unsupported (a test hook).
void check_routed_ops(const llama_flock_routing & routing, const llama_flock_routed_module & module, ggml_backend_dev_t dev, const char * name) {
    const size_t n_max = 64 + 4 * (size_t) routing.top_k;
    ggml_init_params params = { n_max * ggml_tensor_overhead() + ggml_graph_overhead_custom(n_max, false), nullptr, true };
    ggml_context_ptr ctx(ggml_init(params));
    ggml_tensor * x = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, module.a->ne[0], 1);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), n_max, false);
    ggml_build_forward_expand(gf, llama_flock_build_routed(ctx.get(), routing, module, x, nullptr));
    const char * unsupported = std::getenv("FLOCK_TEST_ROUTED_UNSUPPORTED_OP");
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        const bool hooked = unsupported != nullptr && std::strcmp(unsupported, ggml_op_desc(node)) == 0;
        if (hooked || !ggml_backend_dev_supports_op(dev, node)) {
            throw std::runtime_error(std::string("routed LoRA: the ") + ggml_backend_dev_name(dev) + " device cannot run " +
                ggml_op_desc(node) + " for " + name + ", so this model cannot be routed there");
        }
    }
}

} // namespace

static std::unique_ptr<llama_flock_routing> build_routing(
        const llama_model & model,
        llama_adapter_lora ** adapters, const float * scales, int32_t n_adapters,
        const char ** modules, const float ** gates, int32_t n_modules,
        llama_flock_routing_method method, int32_t top_k, float temperature, bool trace) {
    if (n_adapters <= 0 || top_k <= 0 || !(temperature > 0)) {
        throw std::runtime_error("routed LoRA: need at least one adapter, top_k > 0 and temperature > 0");
    }
    auto routing = std::make_unique<llama_flock_routing>();
    routing->method      = method;
    routing->n_adapters  = n_adapters;
    routing->top_k       = top_k;
    routing->temperature = temperature;
    routing->trace       = trace;

    for (int32_t m = 0; m < n_modules; m++) {
        const ggml_tensor * w = model.get_tensor(modules[m]);
        if (w == nullptr) {
            throw std::runtime_error(std::string("routed LoRA: the model has no tensor ") + modules[m]);
        }
        const int64_t d_in  = w->ne[0];
        const int64_t d_out = w->ne[1];

        int64_t rank = 1;
        std::vector<llama_adapter_lora_weight *> weights(n_adapters);
        for (int32_t i = 0; i < n_adapters; i++) {
            weights[i] = adapters[i]->get_weight(const_cast<ggml_tensor *>(w));
            if (weights[i]) {
                rank = std::max<int64_t>(rank, weights[i]->a->ne[1]);
            }
        }

        ggml_init_params params = { 3 * ggml_tensor_overhead(), nullptr, true };
        ggml_context_ptr ctx(ggml_init(params));
        llama_flock_routed_module mod;
        mod.gates = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, d_in, n_adapters);
        mod.a     = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, d_in, rank, n_adapters);
        mod.b     = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, rank, d_out, n_adapters);

        // On the device that holds the base weight, in that device's plain buffer type: a base
        // weight may live in an extra buffer type (CPU_REPACK, AMX, ...) whose layout and kernels
        // serve only its own matmuls, and the scheduler finds no backend for routed ops over
        // tensors placed there. Host weights get a plain CPU buffer.
        ggml_backend_buffer_type_t base_buft = w->buffer ? ggml_backend_buffer_get_type(w->buffer) : nullptr;
        ggml_backend_dev_t dev = base_buft && !ggml_backend_buft_is_host(base_buft) ? ggml_backend_buft_get_device(base_buft) : nullptr;
        if (dev == nullptr) {
            dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        }
        if (dev == nullptr) {
            throw std::runtime_error("routed LoRA: no CPU backend");
        }
        ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(dev);
        ggml_backend_buffer_ptr buf(ggml_backend_alloc_ctx_tensors_from_buft(ctx.get(), buft));
        if (!buf) {
            throw std::runtime_error(std::string("routed LoRA: cannot allocate the stacked adapters for ") + modules[m]);
        }

        std::vector<float> g(gates[m], gates[m] + d_in * n_adapters);
        for (int32_t i = 0; i < n_adapters; i++) {
            float * v = g.data() + i * d_in;
            if (method == LLAMA_FLOCK_ROUTING_PHATGOOSE) {
                standardise(v, d_in);
                for (int64_t j = 0; j < d_in; j++) v[j] /= std::sqrt((float) d_in);
            }
        }
        ggml_backend_tensor_set(mod.gates, g.data(), 0, g.size() * sizeof(float));

        std::vector<float> a((size_t) d_in * rank * n_adapters, 0.0f);
        std::vector<float> b((size_t) rank * d_out * n_adapters, 0.0f);
        for (int32_t i = 0; i < n_adapters; i++) {
            if (!weights[i]) {
                continue; // this adapter leaves the module alone: zero A and B
            }
            const int64_t r = weights[i]->a->ne[1];
            const float scale = weights[i]->get_scale(adapters[i]->alpha, scales[i]);
            const std::vector<float> ai = host_f32(weights[i]->a); // [d_in, r]
            const std::vector<float> bi = host_f32(weights[i]->b); // [r, d_out]
            for (int64_t row = 0; row < r; row++) {
                std::copy(ai.begin() + row * d_in, ai.begin() + (row + 1) * d_in, a.begin() + ((size_t) i * rank + row) * d_in);
            }
            for (int64_t col = 0; col < d_out; col++) {
                for (int64_t row = 0; row < r; row++) {
                    b[((size_t) i * d_out + col) * rank + row] = scale * bi[col * r + row];
                }
            }
        }
        ggml_backend_tensor_set(mod.a, a.data(), 0, a.size() * sizeof(float));
        ggml_backend_tensor_set(mod.b, b.data(), 0, b.size() * sizeof(float));

        check_routed_ops(*routing, mod, dev, modules[m]);
        routing->modules.emplace(modules[m], mod);
        routing->ctxs.push_back(std::move(ctx));
        routing->bufs.push_back(std::move(buf));
    }
    return routing;
}

// llama_context members behind the hooks in llama-context.cpp: the routing state of a context and
// its per-output-token trace.

void llama_context::set_flock_routing(std::unique_ptr<llama_flock_routing> routing) {
    flock_routing = std::move(routing);
    flock_trace.clear();
    flock_trace_names.clear();
    sched_need_reserve = true;
}

const float * llama_context::flock_trace_ith(int32_t i) {
    const size_t stride = flock_trace_names.size() * (flock_routing ? flock_routing->n_adapters : 0);
    if (stride == 0) {
        return nullptr;
    }
    try {
        const int64_t row = output_resolve_row(i);
        return (size_t) (row + 1) * stride <= flock_trace.size() ? flock_trace.data() + row * stride : nullptr;
    } catch (const std::exception &) {
        return nullptr;
    }
}

// Copies this ubatch's traced routing probabilities into flock_trace, one row per output token.
// A traced tensor holds either every token of the ubatch or, after the last layer's output
// selection, only its outputs.
void llama_context::flock_extract_trace(const llm_graph_result * res, const llama_ubatch & ubatch, int64_t n_outputs_prev, int64_t n_outputs_all) {
    const auto & traces = res->t_flock_traces;
    const int64_t n_adapt = flock_routing->n_adapters;
    const int64_t n_mod   = (int64_t) traces.size();
    if (n_outputs_prev == 0) {
        flock_trace_names.clear();
        for (const auto & t : traces) {
            flock_trace_names.push_back(t.first);
        }
        flock_trace.assign((size_t) n_outputs_all * n_mod * n_adapt, 0.0f);
    }
    if ((int64_t) flock_trace_names.size() != n_mod) {
        return; // a graph with other modules (should not happen): leave the rows at zero
    }
    ggml_backend_sched_synchronize(sched.get());
    std::vector<float> tmp;
    for (int64_t j = 0; j < n_mod; j++) {
        ggml_tensor * t = traces[j].second;
        const int64_t rows = t->ne[1];
        tmp.resize((size_t) rows * n_adapt);
        ggml_backend_tensor_get(t, tmp.data(), 0, tmp.size() * sizeof(float));
        const bool only_outputs = rows == n_outputs && rows != (int64_t) ubatch.n_tokens;
        int64_t k = 0;
        for (int64_t r = 0; r < rows; r++) {
            if (!only_outputs && !(ubatch.output[r] || n_outputs == (int64_t) ubatch.n_tokens)) {
                continue;
            }
            const int64_t out = n_outputs_prev + k++;
            if (out >= n_outputs_all) {
                break;
            }
            std::copy(tmp.begin() + r * n_adapt, tmp.begin() + (r + 1) * n_adapt, flock_trace.begin() + (out * n_mod + j) * n_adapt);
        }
    }
}

// Output reordering in llama_context::decode swaps rows i and j; the trace follows its rows.
void llama_context::flock_swap_trace_rows(size_t i, size_t j) {
    const size_t stride = flock_trace_names.size() * (flock_routing ? flock_routing->n_adapters : 0);
    if (stride > 0 && (std::max(i, j) + 1) * stride <= flock_trace.size()) {
        std::swap_ranges(flock_trace.begin() + i * stride, flock_trace.begin() + (i + 1) * stride, flock_trace.begin() + j * stride);
    }
}

// Why the last llama_flock_set_routed_loras on this thread failed.
static thread_local std::string flock_last_error;

const char * llama_flock_routing_last_error(void) {
    return flock_last_error.c_str();
}

int32_t llama_flock_set_routed_loras(
        struct llama_context * ctx,
        struct llama_adapter_lora ** adapters, const float * scales, int32_t n_adapters,
        const char ** modules, const float ** gates, int32_t n_modules,
        enum llama_flock_routing_method method, int32_t top_k, float temperature, bool trace) {
    flock_last_error.clear();
    try {
        ctx->set_flock_routing(build_routing(ctx->get_model(), adapters, scales, n_adapters, modules, gates, n_modules, method, top_k, temperature, trace));
        return 0;
    } catch (const std::exception & err) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, err.what());
        flock_last_error = err.what();
        return -1;
    }
}

void llama_flock_clear_routed_loras(struct llama_context * ctx) {
    ctx->set_flock_routing(nullptr);
}

int32_t llama_flock_routing_trace_n_modules(struct llama_context * ctx) {
    return (int32_t) ctx->flock_trace_modules().size();
}

const char * llama_flock_routing_trace_module(struct llama_context * ctx, int32_t j) {
    const auto & modules = ctx->flock_trace_modules();
    return j >= 0 && (size_t) j < modules.size() ? modules[j] : nullptr;
}

const float * llama_flock_get_routing_trace_ith(struct llama_context * ctx, int32_t i) {
    return ctx->flock_trace_ith(i);
}
