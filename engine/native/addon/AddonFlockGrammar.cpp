// Grammar-constrained decoding's native half (engine/grammar.ts, decoding/constraint.ts). A
// grammar evaluation state is node-llama-cpp's AddonGrammarEvaluationState (llama.cpp's grammar
// sampler), created, cloned and advanced through node-llama-cpp; these add what flock's own
// sampling path needs: masks over the whole vocabulary, computed at a state's first visit by a
// walk over the vocabulary's trie (AddonFlockGrammarTrie.cpp) and kept per grammar state so that
// a state seen before costs a lookup; checks of one token; the token a state forces (the only
// one its mask allows).
// Registered on the addon's exports by patches/addon-exports.diff.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "llama.h"
#include "napi.h"
#include "AddonModel.h"
#include "AddonGrammarEvaluationState.h"
#include "AddonFlockGrammarTrie.h"
#include "json-schema-to-grammar.h"
#include "llama-grammar.h"

// llama.cpp's grammar sampler's context (llama-sampler.cpp's llama_sampler_grammar, private to
// it; node-llama-cpp pins the release). grammarOf checks what it can before trusting it.
struct FlockGrammarSamplerContext {
    const llama_vocab* vocab;
    std::string grammar_str;
    std::string grammar_root;
    llama_grammar* grammar;
};

static AddonGrammarEvaluationState* stateArg(const Napi::Value& value) {
    return Napi::ObjectWrap<AddonGrammarEvaluationState>::Unwrap(value.As<Napi::Object>());
}

// The llama_grammar inside a state's sampler, or null where it cannot be read safely (a freed or
// unparsed state, a sampler that is not the grammar sampler, a layout that does not match).
static llama_grammar* grammarOf(AddonGrammarEvaluationState* state) {
    if (state->sampler == nullptr) return nullptr;
    const char* name = llama_sampler_name(state->sampler);
    if (name == nullptr || std::strcmp(name, "grammar") != 0) return nullptr;
    auto* context = static_cast<FlockGrammarSamplerContext*>(state->sampler->ctx);
    if (context == nullptr || context->grammar == nullptr || context->vocab != state->model->vocab) return nullptr;
    if (context->grammar->vocab != context->vocab || context->grammar->lazy) return nullptr;
    return context->grammar;
}

// A grammar state's identity, independent of the copy it lives in (a clone copies the rules, so
// element pointers differ between copies of one state): each stack as (rule, offset) pairs, the
// stacks sorted, with the pending UTF-8 bytes and the grammar's id. Two states with one key
// allow exactly the same tokens: the mask is a function of the stacks and the partial UTF-8.
static bool stateKey(const llama_grammar& grammar, uint32_t grammarId, std::string& key) {
    std::vector<std::vector<uint32_t>> stacks;
    stacks.reserve(grammar.stacks.size());
    for (const auto& stack : grammar.stacks) {
        std::vector<uint32_t> encoded;
        encoded.reserve(stack.size() * 2);
        for (const llama_grammar_element* element : stack) {
            bool found = false;
            for (size_t rule = 0; rule < grammar.rules.size() && !found; rule++) {
                const auto& elements = grammar.rules[rule];
                if (!elements.empty() && element >= elements.data() && element < elements.data() + elements.size()) {
                    encoded.push_back(uint32_t(rule));
                    encoded.push_back(uint32_t(element - elements.data()));
                    found = true;
                }
            }
            if (!found) return false;
        }
        stacks.push_back(std::move(encoded));
    }
    std::sort(stacks.begin(), stacks.end());
    std::vector<uint32_t> words = { grammarId, grammar.partial_utf8.value, uint32_t(grammar.partial_utf8.n_remain), uint32_t(stacks.size()) };
    for (const auto& stack : stacks) {
        words.push_back(uint32_t(stack.size()));
        words.insert(words.end(), stack.begin(), stack.end());
    }
    key.assign(reinterpret_cast<const char*>(words.data()), words.size() * sizeof(uint32_t));
    return true;
}

// Well-formed UTF-8 (RFC 3629) on top of llama.cpp's grammar. Its decode_utf8 takes any bytes
// shaped like a sequence: overlong forms, surrogates, code points past U+10FFFF, lead bytes
// F5-FF, non-continuation bytes where a continuation is owed. A string rule (JSON's `[^"\\]`)
// then accepts byte-fallback or partial-character tokens that print as U+FFFD, so constrained
// output could break its schema's maxLength or not be valid Unicode text at all. Every mask and
// check below also requires that the bytes generated so far plus the token's stay well-formed.
struct Utf8Owed {
    int remain;    // continuation bytes still owed by the character under way
    uint8_t low;   // the range the next one must fall in
    uint8_t high;
};

// What llama.cpp's partial state owes: (value, n_remain) after a lead byte carries the lead's
// payload bits, enough to tell the leads whose next byte has a narrower range (E0, ED, F0, F4).
static Utf8Owed owedBy(const llama_partial_utf8& partial) {
    if (partial.n_remain <= 0) return { partial.n_remain, 0x80, 0xBF };
    if (partial.n_remain == 2 && partial.value < 16) {  // just after a three-byte lead E0-EF
        return { 2, uint8_t(partial.value == 0x0 ? 0xA0 : 0x80), uint8_t(partial.value == 0xD ? 0x9F : 0xBF) };
    }
    if (partial.n_remain == 3) {  // just after a four-byte lead F0-F4
        return { 3, uint8_t(partial.value == 0 ? 0x90 : 0x80), uint8_t(partial.value == 4 ? 0x8F : 0xBF) };
    }
    return { partial.n_remain, 0x80, 0xBF };
}

// Whether `bytes` continue well-formed UTF-8 from `owed` (a character may stay unfinished).
static bool wellFormedUtf8(Utf8Owed owed, const char* bytes, size_t n) {
    if (owed.remain < 0) return false;
    for (size_t i = 0; i < n; i++) {
        const uint8_t b = uint8_t(bytes[i]);
        if (owed.remain > 0) {
            if (b < owed.low || b > owed.high) return false;
            owed = { owed.remain - 1, 0x80, 0xBF };
        } else if (b >= 0x80) {
            if (b < 0xC2 || b > 0xF4) return false;  // a stray continuation, an overlong C0/C1, past U+10FFFF
            if (b < 0xE0) owed = { 1, 0x80, 0xBF };
            else if (b < 0xF0) owed = { 2, uint8_t(b == 0xE0 ? 0xA0 : 0x80), uint8_t(b == 0xED ? 0x9F : 0xBF) };
            else owed = { 3, uint8_t(b == 0xF0 ? 0x90 : 0x80), uint8_t(b == 0xF4 ? 0x8F : 0xBF) };
        }
    }
    return true;
}

// A token's piece as the grammar reads it (special tokens spelled out).
static std::string pieceOf(const llama_vocab* vocab, llama_token id) {
    std::string piece(64, '\0');
    int32_t length = llama_token_to_piece(vocab, id, piece.data(), int32_t(piece.size()), 0, true);
    if (length < 0) {
        piece.resize(size_t(-length));
        length = llama_token_to_piece(vocab, id, piece.data(), int32_t(piece.size()), 0, true);
    }
    piece.resize(size_t(std::max(0, length)));
    return piece;
}

// llama-grammar.cpp's decode_utf8 from a fresh start (what it does where no bytes are pending):
// the piece's code points appended to codePoints and ended by 0, the bytes of an unfinished
// character after them to partial.
static void decodeFresh(const char* pos, std::vector<uint32_t>& codePoints, std::vector<llama_partial_utf8>& partial) {
    static const int lookup[] = { 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4 };
    const size_t start = codePoints.size();
    uint32_t value = 0;
    int remain = 0;
    while (*pos != 0) {
        const uint8_t first = uint8_t(*pos);
        remain = lookup[first >> 4] - 1;
        if (remain < 0) {
            codePoints.resize(start);
            codePoints.push_back(0);
            partial.push_back(llama_partial_utf8 { 0, remain });
            return;
        }
        value = first & ((1 << (7 - remain)) - 1);
        ++pos;
        while (*pos != 0 && remain > 0) {
            value = (value << 6) + (uint8_t(*pos) & 0x3F);
            ++pos;
            --remain;
        }
        if (remain == 0) codePoints.push_back(value);
    }
    codePoints.push_back(0);
    partial.push_back(llama_partial_utf8 { value, remain });
}

// The vocabulary as llama.cpp's grammar reads it (llama_grammar_apply_impl): each token's kind
// and piece, and the text tokens whose pieces are well-formed alone filed by their code points
// in a trie, decoded once instead of at every pass over the vocabulary.
struct FlockVocabText {
    enum Kind : uint8_t { Text, EndOfGeneration, Never };
    std::vector<uint8_t> kind;
    std::string bytes;  // every token's piece, back to back
    std::vector<size_t> bytesOffset;
    std::unique_ptr<FlockVocabTrie> trie;

    std::string_view piece(size_t id) const { return std::string_view(bytes).substr(bytesOffset[id], bytesOffset[id + 1] - bytesOffset[id]); }

    explicit FlockVocabText(const llama_vocab* vocab) {
        const int32_t n = llama_vocab_n_tokens(vocab);
        // Only the trie keeps what the decoding gives.
        std::vector<uint32_t> codePoints;
        std::vector<size_t> offset(n);
        std::vector<llama_partial_utf8> partial;
        std::vector<uint32_t> filed;
        kind.resize(n);
        partial.reserve(n);
        bytesOffset.reserve(size_t(n) + 1);
        for (int32_t id = 0; id < n; id++) {
            const std::string piece = pieceOf(vocab, id);
            offset[id] = codePoints.size();
            kind[id] = llama_vocab_is_eog(vocab, id) ? EndOfGeneration : (piece.empty() || piece[0] == 0) ? Never : Text;
            decodeFresh(piece.c_str(), codePoints, partial);
            bytesOffset.push_back(bytes.size());
            bytes.append(piece);
            if (kind[id] == Text && wellFormedUtf8({ 0, 0x80, 0xBF }, piece.data(), piece.size())) filed.push_back(uint32_t(id));
        }
        bytesOffset.push_back(bytes.size());
        trie = std::make_unique<FlockVocabTrie>(std::move(filed), codePoints.data(), offset.data(), partial.data());
    }
};

// Masks by grammar state, least recently used evicted beyond a byte budget; one per model
// (engine/grammar.ts), shared by every grammar compiled for it (their ids part of the key).
struct FlockMaskCache {
    std::unique_ptr<FlockVocabText> text;  // the model's, read at the first mask computed
    struct Mask {
        std::vector<uint64_t> allowed;  // bit t: token t may come next
        uint32_t count;                 // how many may
        int32_t only;                   // the one that may, where count is 1
        std::list<std::string>::iterator recency;
    };
    size_t budget;
    size_t bytes = 0;
    std::list<std::string> recency;  // most recent first
    std::unordered_map<std::string, Mask> masks;
    double hits = 0, misses = 0, unkeyed = 0;

    const Mask* find(const std::string& key) {
        auto found = masks.find(key);
        if (found == masks.end()) return nullptr;
        recency.splice(recency.begin(), recency, found->second.recency);
        return &found->second;
    }

    const Mask* insert(const std::string& key, std::vector<uint64_t>&& allowed, uint32_t count) {
        const size_t size = allowed.size() * sizeof(uint64_t) + key.size();
        while (!masks.empty() && bytes + size > budget) {
            const std::string& oldest = recency.back();
            auto evicted = masks.find(oldest);
            bytes -= evicted->second.allowed.size() * sizeof(uint64_t) + oldest.size();
            masks.erase(evicted);
            recency.pop_back();
        }
        int32_t only = -1;
        for (size_t word = 0; count == 1 && only < 0; word++) {
            if (allowed[word] != 0) only = int32_t(word * 64 + __builtin_ctzll(allowed[word]));
        }
        recency.push_front(key);
        bytes += size;
        auto& mask = masks[key];
        mask = Mask { std::move(allowed), count, only, recency.begin() };
        return &mask;
    }
};

static FlockMaskCache* cacheArg(const Napi::Value& value) {
    return value.IsExternal() ? value.As<Napi::External<FlockMaskCache>>().Data() : nullptr;
}

// One grammar pass over the whole vocabulary, as llama_grammar_apply_impl makes it, over the
// pre-decoded vocabulary's trie (valid where no UTF-8 bytes are pending, as decoding then starts
// afresh): the text tokens well-formed alone that the grammar allows, and the end of generation
// where a stack is done. Empty where the walk would visit more than maxNodes nodes.
static std::vector<uint64_t> fullMaskDecoded(const llama_grammar& grammar, const FlockVocabText& text, uint32_t& count, size_t maxNodes = SIZE_MAX) {
    const size_t n = text.kind.size();
    bool allowEndOfGeneration = false;
    for (const auto& stack : grammar.stacks) allowEndOfGeneration |= stack.empty();
    std::vector<uint64_t> allowed((n + 63) / 64, 0);
    for (size_t id = 0; allowEndOfGeneration && id < n; id++) {
        if (text.kind[id] == FlockVocabText::EndOfGeneration) allowed[id / 64] |= uint64_t(1) << (id % 64);
    }
    if (!flockTrieMask(grammar, *text.trie, allowed, maxNodes)) return {};
    count = 0;
    for (const uint64_t word : allowed) count += uint32_t(__builtin_popcountll(word));
    return allowed;
}

// One grammar pass over the whole vocabulary: which of its n tokens may come next (with bytes of a
// character pending: only tokens that go on with it well-formed).
static std::vector<uint64_t> fullMask(llama_sampler* sampler, const FlockVocabText& text, Utf8Owed owed, size_t n, uint32_t& count) {
    static thread_local std::vector<llama_token_data> candidates;
    candidates.resize(n);
    for (size_t i = 0; i < n; i++) candidates[i] = llama_token_data { llama_token(i), 0.0f, 0.0f };
    llama_token_data_array array = { candidates.data(), candidates.size(), -1, false };
    llama_sampler_apply(sampler, &array);
    std::vector<uint64_t> allowed((n + 63) / 64, 0);
    count = 0;
    for (size_t i = 0; i < array.size; i++) {
        const size_t id = size_t(array.data[i].id);
        if (array.data[i].logit == -INFINITY) continue;
        if (text.kind[id] == FlockVocabText::Text && !wellFormedUtf8(owed, text.piece(id).data(), text.piece(id).size())) continue;
        allowed[id / 64] |= uint64_t(1) << (id % 64);
        count++;
    }
    return allowed;
}

// What cachedMask does where the state's mask is not cached.
enum class OnMiss {
    Nothing,
    Compute,
    // Compute where only a few characters may come next (flockGrammarNarrow) and the walk stays
    // short: about what a few checks of single tokens cost, and it answers every later one. A
    // walk that outgrows MAX_NARROW_SHARE of the trie's nodes is given up.
    ComputeIfNarrow,
};
static constexpr size_t MAX_NARROW_SHARE = 64;

// The cached mask of the state's position, computed on a miss as onMiss says; null where the
// state has no key or its mask was not computed.
static const FlockMaskCache::Mask* cachedMask(AddonGrammarEvaluationState* state, FlockMaskCache* cache, uint32_t grammarId, OnMiss onMiss) {
    llama_grammar* grammar = grammarOf(state);
    static thread_local std::string key;
    if (grammar == nullptr || !stateKey(*grammar, grammarId, key)) {
        cache->unkeyed++;
        return nullptr;
    }
    if (const FlockMaskCache::Mask* mask = cache->find(key)) {
        cache->hits++;
        return mask;
    }
    if (onMiss == OnMiss::Nothing) return nullptr;
    // The trie walk reads characters from a fresh start; llama.cpp's own pass does the rest.
    const bool walkable = grammar->partial_utf8.n_remain == 0 && !grammar->stacks.empty() && !flockGrammarHasTokenElements(*grammar);
    if (onMiss == OnMiss::ComputeIfNarrow && !(walkable && flockGrammarNarrow(*grammar))) return nullptr;
    if (!cache->text) cache->text = std::make_unique<FlockVocabText>(state->model->vocab);
    uint32_t count = 0;
    std::vector<uint64_t> allowed;
    if (onMiss == OnMiss::ComputeIfNarrow) {
        allowed = fullMaskDecoded(*grammar, *cache->text, count, cache->text->trie->nodes.size() / MAX_NARROW_SHARE);
        if (allowed.empty()) return nullptr;
    } else if (walkable) {
        allowed = fullMaskDecoded(*grammar, *cache->text, count);
    } else {
        allowed = fullMask(state->sampler, *cache->text, owedBy(grammar->partial_utf8), size_t(llama_vocab_n_tokens(state->model->vocab)), count);
    }
    cache->misses++;
    return cache->insert(key, std::move(allowed), count);
}

// flockGrammarValid(state): whether the state's grammar parsed (llama.cpp returns no sampler,
// and logs why, when it does not).
Napi::Value flockGrammarValid(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
        Napi::TypeError::New(env, "flockGrammarValid(state: AddonGrammarEvaluationState)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    return Napi::Boolean::New(env, stateArg(info[0])->sampler != nullptr);
}

// flockGrammarMaskCache(budgetBytes): a mask cache for one model's grammars, freed with the object.
Napi::Value flockGrammarMaskCache(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
        Napi::TypeError::New(env, "flockGrammarMaskCache(budgetBytes: number)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    auto* cache = new FlockMaskCache();
    cache->budget = size_t(std::max(0.0, info[0].As<Napi::Number>().DoubleValue()));
    return Napi::External<FlockMaskCache>::New(env, cache, [](Napi::Env, FlockMaskCache* data) { delete data; });
}

// flockGrammarMaskCacheStats(cache): { hits, misses, unkeyed, masks, bytes }.
Napi::Value flockGrammarMaskCacheStats(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    FlockMaskCache* cache = info.Length() < 1 ? nullptr : cacheArg(info[0]);
    if (cache == nullptr) {
        Napi::TypeError::New(env, "flockGrammarMaskCacheStats(cache: External)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Object stats = Napi::Object::New(env);
    stats.Set("hits", cache->hits);
    stats.Set("misses", cache->misses);
    stats.Set("unkeyed", cache->unkeyed);
    stats.Set("masks", double(cache->masks.size()));
    stats.Set("bytes", double(cache->bytes));
    return stats;
}

// flockGrammarMask(state, logits, cache?, grammarId?): sets the logit of every token the grammar
// forbids next to -Infinity, in place (and every logit beyond the grammar's vocabulary, a draft's
// padded one); returns how many tokens the grammar allows. With a cache, the state's mask is
// looked up, or computed over the whole vocabulary and kept; without, one pass of llama.cpp's
// grammar over the tokens not already at -Infinity.
Napi::Value flockGrammarMask(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
        Napi::TypeError::New(env, "flockGrammarMask(state: AddonGrammarEvaluationState, logits: Float32Array, cache?: External, grammarId?: number)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    AddonGrammarEvaluationState* state = stateArg(info[0]);
    if (state->sampler == nullptr) {
        Napi::Error::New(env, "the grammar did not parse").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Float32Array logitsArray = info[1].As<Napi::Float32Array>();
    float* logits = logitsArray.Data();
    const size_t n = std::min(logitsArray.ElementLength(), size_t(llama_vocab_n_tokens(state->model->vocab)));
    for (size_t i = n; i < logitsArray.ElementLength(); i++) logits[i] = -INFINITY;
    try {
        FlockMaskCache* cache = info.Length() >= 4 ? cacheArg(info[2]) : nullptr;
        if (cache != nullptr) {
            const uint32_t grammarId = info[3].As<Napi::Number>().Uint32Value();
            if (const FlockMaskCache::Mask* mask = cachedMask(state, cache, grammarId, OnMiss::Compute)) {
                // Whole words at a time: inside a string nearly every word is all ones, between
                // fields nearly every word is zero.
                for (size_t word = 0; word * 64 < n; word++) {
                    const uint64_t bits = mask->allowed[word];
                    const size_t end = std::min(n, word * 64 + 64);
                    if (bits == ~uint64_t(0)) continue;
                    if (bits == 0) {
                        std::fill(logits + word * 64, logits + end, -INFINITY);
                        continue;
                    }
                    for (size_t t = word * 64; t < end; t++) {
                        if (!((bits >> (t % 64)) & 1)) logits[t] = -INFINITY;
                    }
                }
                return Napi::Number::New(env, mask->count);
            }
        }
        static thread_local std::vector<llama_token_data> candidates;
        candidates.clear();
        candidates.reserve(n);
        for (size_t i = 0; i < n; i++) {
            if (logits[i] > -INFINITY) candidates.push_back(llama_token_data { llama_token(i), logits[i], 0.0f });
        }
        llama_token_data_array array = { candidates.data(), candidates.size(), -1, false };
        llama_sampler_apply(state->sampler, &array);
        const llama_grammar* grammar = grammarOf(state);
        double allowed = 0;
        for (size_t i = 0; i < array.size; i++) {
            const llama_token id = array.data[i].id;
            const bool wellFormed = grammar == nullptr || llama_vocab_is_eog(state->model->vocab, id) || [&] {
                const std::string piece = pieceOf(state->model->vocab, id);
                return wellFormedUtf8(owedBy(grammar->partial_utf8), piece.data(), piece.size());
            }();
            if (array.data[i].logit == -INFINITY || !wellFormed) logits[id] = -INFINITY;
            else allowed++;
        }
        return Napi::Number::New(env, allowed);
    } catch (const std::exception& e) {
        Napi::Error::New(env, std::string("grammar: ") + e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
}

// flockGrammarAllows(state, token, cache?, grammarId?, maskIfNarrow?): whether the token may come
// next — a bit of the state's cached mask where there is one (with maskIfNarrow, computed first
// where only a few characters may come next: OnMiss::ComputeIfNarrow), else llama.cpp's grammar
// on that one token.
Napi::Value flockGrammarAllows(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsNumber()) {
        Napi::TypeError::New(env, "flockGrammarAllows(state: AddonGrammarEvaluationState, token: number, cache?: External, grammarId?: number, maskIfNarrow?: boolean)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    AddonGrammarEvaluationState* state = stateArg(info[0]);
    const int64_t token = info[1].As<Napi::Number>().Int64Value();
    if (state->sampler == nullptr || token < 0 || token >= llama_vocab_n_tokens(state->model->vocab)) return Napi::Boolean::New(env, false);
    try {
        FlockMaskCache* cache = info.Length() >= 4 ? cacheArg(info[2]) : nullptr;
        if (cache != nullptr) {
            const OnMiss onMiss = info.Length() >= 5 && info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value() ? OnMiss::ComputeIfNarrow : OnMiss::Nothing;
            if (const FlockMaskCache::Mask* mask = cachedMask(state, cache, info[3].As<Napi::Number>().Uint32Value(), onMiss)) {
                return Napi::Boolean::New(env, (mask->allowed[size_t(token) / 64] >> (token % 64)) & 1);
            }
        }
        llama_token_data candidate = { llama_token(token), 1.0f, 0.0f };
        llama_token_data_array array = { &candidate, 1, -1, false };
        llama_sampler_apply(state->sampler, &array);
        if (array.size != 1 || array.data[0].logit == -INFINITY) return Napi::Boolean::New(env, false);
        const llama_grammar* grammar = grammarOf(state);
        if (grammar == nullptr || llama_vocab_is_eog(state->model->vocab, llama_token(token))) return Napi::Boolean::New(env, true);
        const std::string piece = pieceOf(state->model->vocab, llama_token(token));
        return Napi::Boolean::New(env, wellFormedUtf8(owedBy(grammar->partial_utf8), piece.data(), piece.size()));
    } catch (const std::exception& e) {
        Napi::Error::New(env, std::string("grammar: ") + e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
}

// flockGrammarForcedToken(state, cache, grammarId, computeOnMiss): the token the grammar forces
// next — the only one it allows — from the state's mask (computed on a miss when asked, else
// only where it is cached); -1 where more than one (or none) may come, or the mask is unknown.
Napi::Value flockGrammarForcedToken(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    FlockMaskCache* cache = info.Length() < 4 ? nullptr : cacheArg(info[1]);
    if (!info[0].IsObject() || cache == nullptr || !info[2].IsNumber() || !info[3].IsBoolean()) {
        Napi::TypeError::New(env, "flockGrammarForcedToken(state: AddonGrammarEvaluationState, cache: External, grammarId: number, computeOnMiss: boolean)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    AddonGrammarEvaluationState* state = stateArg(info[0]);
    if (state->sampler == nullptr) return Napi::Number::New(env, -1);
    try {
        const FlockMaskCache::Mask* mask = cachedMask(state, cache, info[2].As<Napi::Number>().Uint32Value(), info[3].As<Napi::Boolean>().Value() ? OnMiss::Compute : OnMiss::Nothing);
        return Napi::Number::New(env, mask == nullptr || mask->count != 1 ? -1 : mask->only);
    } catch (const std::exception& e) {
        Napi::Error::New(env, std::string("grammar: ") + e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
}

// flockGrammarFree(state): frees the state's grammar now rather than when the garbage collector
// finalizes the object: V8 does not see that native memory, and would let thousands of states
// (one per speculative candidate) pile up before collecting them. The state is unusable after.
Napi::Value flockGrammarFree(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
        Napi::TypeError::New(env, "flockGrammarFree(state: AddonGrammarEvaluationState)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    AddonGrammarEvaluationState* state = stateArg(info[0]);
    llama_sampler_free(state->sampler);
    state->sampler = nullptr;
    return env.Undefined();
}

// flockJsonSchemaToGrammar(schema): llama.cpp's JSON-schema converter (the one llama-server
// uses): the schema's JSON text in, GBNF out; throws with the converter's reasons.
Napi::Value flockJsonSchemaToGrammar(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
        Napi::TypeError::New(env, "flockJsonSchemaToGrammar(schema: string)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    try {
        const common_json schema = common_json::parse(info[0].As<Napi::String>().Utf8Value());
        return Napi::String::New(env, json_schema_to_grammar(schema, true));
    } catch (const std::exception& e) {
        Napi::Error::New(env, e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
}
