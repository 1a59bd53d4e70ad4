// flock's additions to node-llama-cpp's addon (compiled with it; registered on AddonContext by
// patches/addon-context.diff). Reached from TypeScript only through models/native.ts.
#include <cstring>

#include "llama.h"
#include "napi.h"
#include "AddonContext.h"
#include "AddonModel.h"

// flockGetLogits(batchLogitIndex): the raw next-token logits llama.cpp computed for that batch
// position, copied into a Float32Array of the vocabulary's size. Synchronous: a memcpy, read
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
    Napi::Float32Array result = Napi::Float32Array::New(info.Env(), n_vocab);
    std::memcpy(result.Data(), logits, sizeof(float) * n_vocab);
    return result;
}
