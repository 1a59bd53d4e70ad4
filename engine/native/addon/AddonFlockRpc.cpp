// flock's access to llama.cpp's RPC backend (ggml-rpc): a model entry's "rpc" servers hold its
// layers. The RPC functions are looked up through the backend registry (they live in a separate
// library in a GGML_BACKEND_DL build); engine/native.ts calls these, and the patched AddonModel
// constructor (patches/addon-model.diff) takes the devices set for its file.
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "napi.h"

typedef ggml_backend_reg_t (*flock_rpc_add_server_t)(const char* endpoint);
typedef bool (*flock_rpc_endpoint_failed_t)(const char* endpoint);

static ggml_backend_reg_t flockRpcRegistry() {
    if (ggml_backend_reg_count() == 0) ggml_backend_load_all();
    return ggml_backend_reg_by_name("RPC");
}

template <typename T>
static T flockRpcFunction(const char* name) {
    ggml_backend_reg_t reg = flockRpcRegistry();
    return reg == nullptr ? nullptr : (T)ggml_backend_reg_get_proc_address(reg, name);
}

// Devices per model file, set by flockSetModelRpcServers and taken by the next AddonModel
// constructed for that file.
static std::mutex flockModelDevicesMutex;
static std::map<std::string, std::vector<ggml_backend_dev_t>> flockModelDevices;

void flockTakeModelDevices(const std::string& modelPath, std::vector<ggml_backend_dev_t>& out) {
    std::lock_guard<std::mutex> lock(flockModelDevicesMutex);
    auto it = flockModelDevices.find(modelPath);
    if (it == flockModelDevices.end()) return;
    out = it->second;
    flockModelDevices.erase(it);
}

// flockRpcSupported(): whether this build has the RPC backend.
Napi::Value flockRpcSupported(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), flockRpcFunction<flock_rpc_add_server_t>("ggml_backend_rpc_add_server") != nullptr &&
                                              flockRpcFunction<flock_rpc_endpoint_failed_t>("ggml_backend_rpc_endpoint_failed") != nullptr);
}

// flockSetModelRpcServers(modelPath, endpoints): connects to each "host:port" (throws when one
// cannot be reached) and makes their devices, in order, the next load of modelPath's devices.
Napi::Value flockSetModelRpcServers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto addServer = flockRpcFunction<flock_rpc_add_server_t>("ggml_backend_rpc_add_server");
    auto endpointFailed = flockRpcFunction<flock_rpc_endpoint_failed_t>("ggml_backend_rpc_endpoint_failed");
    if (addServer == nullptr) {
        Napi::Error::New(env, "this build has no RPC backend").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const std::string modelPath = info[0].As<Napi::String>().Utf8Value();
    Napi::Array endpoints = info[1].As<Napi::Array>();
    std::vector<ggml_backend_dev_t> devices;
    for (uint32_t i = 0; i < endpoints.Length(); i++) {
        const std::string endpoint = endpoints.Get(i).As<Napi::String>().Utf8Value();
        ggml_backend_reg_t reg = addServer(endpoint.c_str());
        if (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0) {
            Napi::Error::New(env, "cannot reach the RPC server " + endpoint).ThrowAsJavaScriptException();
            return env.Undefined();
        }
        // The server's registration is cached from an earlier load: ask it now (a fresh
        // connection) whether it answers.
        for (size_t d = 0; d < ggml_backend_reg_dev_count(reg); d++) {
            ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, d);
            size_t free = 0, total = 0;
            ggml_backend_dev_memory(dev, &free, &total);
            if (total == 0 || (endpointFailed != nullptr && endpointFailed(endpoint.c_str()))) {
                Napi::Error::New(env, "cannot reach the RPC server " + endpoint).ThrowAsJavaScriptException();
                return env.Undefined();
            }
            devices.push_back(dev);
        }
    }
    std::lock_guard<std::mutex> lock(flockModelDevicesMutex);
    flockModelDevices[modelPath] = devices;
    return Napi::Number::New(env, double(devices.size()));
}

// flockRpcFailed(endpoints): those of `endpoints` that failed (unreachable, or died) since they
// last connected; after such a failure a computation's results are zeros and must be discarded.
Napi::Value flockRpcFailed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array endpoints = info[0].As<Napi::Array>();
    Napi::Array failed = Napi::Array::New(env);
    auto endpointFailed = flockRpcFunction<flock_rpc_endpoint_failed_t>("ggml_backend_rpc_endpoint_failed");
    if (endpointFailed == nullptr) return failed;
    uint32_t n = 0;
    for (uint32_t i = 0; i < endpoints.Length(); i++) {
        const std::string endpoint = endpoints.Get(i).As<Napi::String>().Utf8Value();
        if (endpointFailed(endpoint.c_str())) failed.Set(n++, Napi::String::New(env, endpoint));
    }
    return failed;
}
