#pragma once

// flock: routed LoRA. Per token and per adapted module, every adapter is scored against its
// gate vector for that module, softmax(scores / temperature) keeps the top k (renormalised),
// and Σ w_i · scale_i · B_i A_i x is added to the module's output, all inside the graph.
//   phatgoose: s_i(x) = LN(x) · LN(v_i) / sqrt(d_in)   (LN: standardise, no affine, eps 1e-5)
//   arrow:     s_i(x) = |x · v_i|                      (then / temperature, as for both)

#include "ggml.h"
#include "ggml-cpp.h"
#include "llama.h"

#include <string>
#include <unordered_map>
#include <vector>

struct llama_flock_routed_module {
    ggml_tensor * gates = nullptr; // [d_in, n_adapters]; phatgoose: LN(v_i)/sqrt(d_in); arrow: v_i
    ggml_tensor * a     = nullptr; // [d_in, rank, n_adapters], zero-padded to the largest rank
    ggml_tensor * b     = nullptr; // [rank, d_out, n_adapters], each adapter's scale folded in
};

struct llama_flock_routing {
    llama_flock_routing_method method = LLAMA_FLOCK_ROUTING_PHATGOOSE;
    int32_t n_adapters  = 0;
    int32_t top_k       = 2;
    float   temperature = 1.0f;
    bool    trace       = false; // keep each module's softmax over the adapters (see llama.h)

    // keyed by the base weight's tensor name
    std::unordered_map<std::string, llama_flock_routed_module> modules;

    std::vector<ggml_context_ptr>        ctxs;
    std::vector<ggml_backend_buffer_ptr> bufs;

    const llama_flock_routed_module * find(const ggml_tensor * w) const {
        const auto it = modules.find(w->name);
        return it == modules.end() ? nullptr : &it->second;
    }

    // graph nodes one routed module adds (for the graph's node budget)
    uint32_t n_nodes() const {
        return (uint32_t) modules.size() * (24u + (uint32_t) top_k);
    }
};

// The routed LoRA term of one module for input cur ([d_in, ...]); returns [d_out, n_tokens].
// With routing.trace, *probs is set to the module's softmax over the adapters
// ([n_adapters, n_tokens], marked as a graph output so its memory survives the computation).
ggml_tensor * llama_flock_build_routed(ggml_context * ctx0, const llama_flock_routing & routing, const llama_flock_routed_module & module, ggml_tensor * cur, ggml_tensor ** probs_out);
