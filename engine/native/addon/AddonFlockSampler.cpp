// flock's per-position sampling, native: the same arithmetic, step for step, as
// decoding/sampler.ts (softmax, top-k, the top-p/min-p cut, the inverse-CDF draw) and
// decoding/noise.ts (keyed noise, the exponential race), which stay the reference:
// test/native.test.ts holds both to the same tokens. Synchronous calls on the logits flock
// already holds; scratch buffers are kept between calls (no allocation per position).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "napi.h"

// JavaScript evaluates a * b + c as two roundings; a fused multiply-add would round once and the
// two paths could disagree on a token. Without trapping math GCC may vectorize loops that
// compare doubles (results are the same; only floating-point exception flags could differ).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

namespace {

struct Sampling {
    double temperature;
    size_t topK;  // 0: off
    double topP;
    double minP;
};

// The first index i >= from with values[i] > threshold, or n (a NaN is above nothing): the scan
// under argmax, top-k and the softmax's maximum, where almost every value is below the threshold.
size_t nextAboveScalar(const float* values, size_t from, size_t n, float threshold) {
    for (size_t i = from; i < n; i++) if (values[i] > threshold) return i;
    return n;
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same, 32 values per step: four ordered compares (false on NaN, as > is) and one test.
__attribute__((target("avx2"))) size_t nextAboveAvx2(const float* values, size_t from, size_t n, float threshold) {
    const __m256 t = _mm256_set1_ps(threshold);
    size_t i = from;
    for (; i + 32 <= n; i += 32) {
        const __m256 a = _mm256_cmp_ps(_mm256_loadu_ps(values + i), t, _CMP_GT_OQ);
        const __m256 b = _mm256_cmp_ps(_mm256_loadu_ps(values + i + 8), t, _CMP_GT_OQ);
        const __m256 c = _mm256_cmp_ps(_mm256_loadu_ps(values + i + 16), t, _CMP_GT_OQ);
        const __m256 d = _mm256_cmp_ps(_mm256_loadu_ps(values + i + 24), t, _CMP_GT_OQ);
        const __m256 any = _mm256_or_ps(_mm256_or_ps(a, b), _mm256_or_ps(c, d));
        if (!_mm256_testz_ps(any, any)) break;
    }
    for (; i + 8 <= n; i += 8) {
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + i), t, _CMP_GT_OQ));
        if (mask != 0) return i + size_t(__builtin_ctz(unsigned(mask)));
    }
    return nextAboveScalar(values, i, n, threshold);
}

size_t (*const nextAbove)(const float*, size_t, size_t, float) = [] {
    __builtin_cpu_init();  // this may run before libgcc's own constructor has
    return __builtin_cpu_supports("avx2") ? nextAboveAvx2 : nextAboveScalar;
}();
#else
size_t (*const nextAbove)(const float*, size_t, size_t, float) = nextAboveScalar;
#endif

// argmax: the first largest value; a NaN never wins (sampler.ts's argmax: with a NaN first,
// nothing compares above it and the answer is 0, here too).
size_t argmaxOf(const float* values, size_t n) {
    size_t best = 0;
    if (n == 0) return 0;
    for (size_t i = nextAbove(values, 1, n, values[0]); i < n; i = nextAbove(values, i + 1, n, values[best])) best = i;
    return best;
}

// The largest value, NaN skipped; -INFINITY when there is none.
float maxOf(const float* values, size_t n) {
    float max = -INFINITY;
    for (size_t i = nextAbove(values, 0, n, max); i < n; i = nextAbove(values, i + 1, n, max)) max = values[i];
    return max;
}

// exp(x) for x <= 0, the one exponential every kernel here takes: x = k·ln2 + r with |r| <= ln2/2
// (Cody and Waite's two-part ln2, so k·ln2 is exact), e^r by its Taylor polynomial of degree 13
// (truncation below 1e-17) in Estrin's order, times 2^k built from its bits. Within 2.2 ulp of
// the true value (the worst of 2·10^6 points against long double), and branch-free, so that a
// loop over it is vectorized (glibc's exp is a call per token, most of a
// position's time at 151,936 tokens); the same on every machine (IEEE doubles, no fused
// multiply-add). Results below the smallest normal double (x < -708) are flushed to zero: such a
// probability cannot be drawn.
inline double expNonPositive(double x) {
    const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
    const double clamped = x < -708.0 ? -708.0 : x;
    const double t = clamped * 1.4426950408889634 + shifter;
    const double k = t - shifter;
    const double r = (clamped - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    // Estrin's scheme: pairs, then pairs of pairs; a chain of 8 dependent operations, not 26.
    const double r2 = r * r;
    const double r4 = r2 * r2;
    const double r8 = r4 * r4;
    const double q0 = 1.0 + r;
    const double q1 = 0.5 + r * (1.0 / 6.0);
    const double q2 = 1.0 / 24.0 + r * (1.0 / 120.0);
    const double q3 = 1.0 / 720.0 + r * (1.0 / 5040.0);
    const double q4 = 1.0 / 40320.0 + r * (1.0 / 362880.0);
    const double q5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0);
    const double q6 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0);
    const double s0 = q0 + q1 * r2;
    const double s1 = q2 + q3 * r2;
    const double s2 = q4 + q5 * r2;
    const double p = (s0 + s1 * r4) + (s2 + q6 * r4) * r8;
    int64_t tBits, shifterBits;
    std::memcpy(&tBits, &t, sizeof t);
    std::memcpy(&shifterBits, &shifter, sizeof shifter);
    const uint64_t scaleBits = uint64_t(tBits - shifterBits + 1023) << 52;
    double scale;
    std::memcpy(&scale, &scaleBits, sizeof scale);
    const double value = p * scale;
    return x < -708.0 ? 0.0 : value;
}

// out[i] = exp((logits[i] - max) / T): the vocabulary-sized pass, compiled for AVX2 too where
// the build allows (the same results: the same IEEE operations in each lane).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void exponentials(const float* logits, size_t n, float max, double temperature, double* out) {
    if (temperature == 1) {  // x / 1 is x: the same values without a division per token
        for (size_t i = 0; i < n; i++) out[i] = expNonPositive(double(logits[i]) - double(max));
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = expNonPositive((double(logits[i]) - double(max)) / temperature);
}

// One token's exp((logit - max) / T), the very operations exponentials() applies.
inline double weightOf(float logit, float max, double temperature) {
    return temperature == 1 ? expNonPositive(double(logit) - double(max)) : expNonPositive((double(logit) - double(max)) / temperature);
}

// A sum in eight interleaved partial sums (value i into sum i mod 8), combined pairwise at the
// end: the order sampler.ts's softmaxInto adds in, which vector lanes can follow (one running
// sum is a chain of dependent additions, most of a pass's time at 151,936 tokens).
struct LaneSum {
    double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    // Adds term(i) for i < n into lane i mod 8 (the caller's first index must be a lane's first).
    template <typename Term>
    void add(size_t n, Term term) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) for (size_t j = 0; j < 8; j++) lanes[j] += term(i + j);
        for (; i < n; i++) lanes[i & 7] += term(i);
    }
    double total() const { return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])); }
};

double laneSum(const double* values, size_t n) {
    LaneSum sum;
    sum.add(n, [&](size_t i) { return values[i]; });
    return sum.total();
}

// probs = exp((logits - max) / T) / total, in double (sampler.ts's softmaxInto); the total, 0
// when no logit is finite.
double softmaxInto(const float* logits, size_t n, double temperature, double* probs) {
    const float max = maxOf(logits, n);
    if (max == -INFINITY) return 0;
    exponentials(logits, n, max, temperature, probs);
    const double total = laneSum(probs, n);
    for (size_t i = 0; i < n; i++) probs[i] /= total;
    return total;
}

// softmaxInto's total without storing the exponentials, a block at a time; with the count of
// tokens whose exponential is positive (those the distribution gives a probability).
struct Total {
    double total;
    size_t positives;
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
Total exponentialTotal(const float* logits, size_t n, float max, double temperature) {
    constexpr size_t BLOCK = 256;
    double block[BLOCK];
    LaneSum sum;
    size_t positives = 0;
    for (size_t start = 0; start < n; start += BLOCK) {
        const size_t count = std::min(BLOCK, n - start);
        exponentials(logits + start, count, max, temperature, block);
        // start is a multiple of 8: block index j is token start + j's lane.
        sum.add(count, [&](size_t j) { return block[j]; });
        for (size_t j = 0; j < count; j++) positives += block[j] > 0;
    }
    return {sum.total(), positives};
}

// --- top-k (sampler.ts's largestLogits and topKDistribution) -------------------------------

// Largest logit first, ties by token id: a total order, so any selection method gives the same k.
struct ByLogit {
    const float* logits;
    bool operator()(int32_t a, int32_t b) const { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); }
};

void largestLogits(const float* logits, size_t n, size_t k, std::vector<int32_t>& top) {
    top.clear();
    if (k > 256) {
        for (size_t i = 0; i < n; i++) if (logits[i] > -INFINITY) top.push_back(int32_t(i));
        const ByLogit order{logits};
        if (top.size() > k) {
            std::nth_element(top.begin(), top.begin() + (k - 1), top.end(), order);
            top.resize(k);
        }
        std::sort(top.begin(), top.end(), order);
        return;
    }
    // One pass keeping the best k in order: an equal logit loses to the earlier token kept.
    // Until k are kept, every finite logit enters; then only those above the k-th (held in a
    // local, so the common case is one comparison).
    float kth = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        // Once k are kept, straight to the next logit above the k-th.
        if (top.size() == k && (i = nextAbove(logits, i, n, kth)) == n) break;
        const float l = logits[i];
        if (!(l > kth)) {
            if (top.size() == k || !(l > -INFINITY)) continue;
        } else if (top.size() == k) {
            top.pop_back();
        }
        size_t at = top.size();
        top.push_back(int32_t(i));
        while (at > 0 && logits[top[at - 1]] < l) {
            top[at] = top[at - 1];
            at--;
        }
        top[at] = int32_t(i);
        if (top.size() == k) kth = logits[top[k - 1]];
    }
}

// The kept tokens and their probabilities, by token id; false when none has a positive weight.
bool topKDistribution(const float* logits, const Sampling& s, const std::vector<int32_t>& candidates, std::vector<int32_t>& tokens,
                      std::vector<double>& weights, std::vector<std::pair<int32_t, double>>& kept) {
    tokens.clear();
    weights.clear();
    kept.clear();
    if (candidates.empty()) return false;
    const double max = logits[candidates[0]];
    for (const int32_t token : candidates) {
        const double w = expNonPositive((double(logits[token]) - max) / s.temperature);
        if (w > 0) {
            tokens.push_back(token);
            weights.push_back(w);
        }
    }
    size_t keep = tokens.size();
    if (s.topP < 1) {
        double survivors = 0;
        for (size_t r = 0; r < keep; r++) survivors += weights[r];
        double cumulative = 0;
        for (size_t r = 0; r < keep; r++) {
            cumulative += weights[r] / survivors;
            if (cumulative >= s.topP) {
                keep = r + 1;
                break;
            }
        }
    }
    if (s.minP > 0 && keep > 0) {
        const double threshold = s.minP * weights[0];
        size_t r = 1;
        while (r < keep && weights[r] >= threshold) r++;
        keep = r;
    }
    double mass = 0;
    for (size_t r = 0; r < keep; r++) mass += weights[r];
    for (size_t r = 0; r < keep; r++) kept.emplace_back(tokens[r], weights[r] / mass);
    std::sort(kept.begin(), kept.end());
    return !kept.empty();
}

// --- the top-p / min-p cut (sampler.ts's truncationCut, octaves and cutWithin) --------------

constexpr int BUCKETS = 8 * 64;

// A positive double's high word orders like its value: 11 exponent bits, then the mantissa,
// whose first 3 bits split the octave into eighths.
inline uint32_t eighthOctave(double p) {
    uint64_t bits;
    std::memcpy(&bits, &p, sizeof bits);
    return uint32_t(bits >> 32) >> 17;
}

struct Octaves {
    uint32_t counts[BUCKETS];
    double mass[BUCKETS];
    size_t positives = 0;
    double max = 0;
    uint32_t top = 0;

    double floorOf(int b) const {
        if (b >= BUCKETS - 1) return 0;
        const uint64_t bits = uint64_t(uint32_t((top - uint32_t(b)) << 17)) << 32;
        double edge;
        std::memcpy(&edge, &bits, sizeof edge);
        return edge;
    }
};

void fillOctaves(const double* probs, size_t n, Octaves& h) {
    h.positives = 0;
    h.max = 0;
    h.top = 0;
    for (size_t i = 0; i < n; i++) {
        if (probs[i] > h.max) {
            h.max = probs[i];
            h.top = eighthOctave(probs[i]);
        }
    }
    std::fill(h.counts, h.counts + BUCKETS, 0u);
    std::fill(h.mass, h.mass + BUCKETS, 0.0);
    for (size_t i = 0; i < n; i++) {
        const double p = probs[i];
        if (!(p > 0)) continue;
        h.positives++;
        const uint32_t b = std::min<uint32_t>(BUCKETS - 1, h.top - eighthOctave(p));
        h.counts[b]++;
        h.mass[b] += p;
    }
}

// How many of the largest probabilities (values, descending: every one at or above floor) are
// kept, or -1 when the cut may lie below the floor.
long cutWithin(const std::vector<double>& values, size_t positives, double topP, double minPFloor, double floor) {
    const size_t known = values.size();
    const bool complete = known == positives;
    size_t keep = positives;
    if (topP < 1) {
        double cumulative = 0;
        for (size_t r = 0; r < keep; r++) {
            if (r == known) return -1;
            cumulative += values[r];
            if (cumulative >= topP) {
                keep = r + 1;
                break;
            }
        }
    }
    if (minPFloor > 0) {
        size_t r = 1;
        while (r < keep) {
            if (r == known) {
                if (floor <= minPFloor || complete) break;
                return -1;
            }
            if (values[r] < minPFloor) break;
            r++;
        }
        keep = r;
    }
    return keep <= known ? long(keep) : -1;
}

// Truncates probs in place by top-p and min-p as a sort of the whole vocabulary would.
void truncate(double* probs, size_t n, double topP, double minP, Octaves& h, std::vector<double>& values) {
    fillOctaves(probs, n, h);
    const double minPFloor = minP > 0 ? minP * h.max : 0;
    int bucket = 0;
    size_t count = 0;
    for (double mass = 0; bucket < BUCKETS - 1; bucket++) {
        count += h.counts[bucket];
        mass += h.mass[bucket];
        if (topP < 1 ? mass >= topP * (1 + 1e-9) : h.floorOf(bucket) <= minPFloor) break;
    }
    if (bucket == BUCKETS - 1) count = h.positives;
    for (;;) {
        const double floor = h.floorOf(bucket);
        values.clear();
        for (size_t i = 0; i < n; i++) if (probs[i] > 0 && probs[i] >= floor) values.push_back(probs[i]);
        std::sort(values.begin(), values.end(), std::greater<double>());
        const long keep = cutWithin(values, h.positives, topP, minPFloor, floor);
        if (keep >= 0) {
            double mass = 0;
            for (long r = 0; r < keep; r++) mass += values[r];
            const double last = values[keep - 1];
            long ties = 0;
            for (long r = keep - 1; r >= 0 && values[r] == last; r--) ties++;
            for (size_t i = 0; i < n; i++) {
                const double p = probs[i];
                probs[i] = p > last || (p == last && ties-- > 0) ? p / mass : 0;
            }
            return;
        }
        bucket = bucket < BUCKETS - 2 ? bucket + 1 : BUCKETS - 1;
        count = bucket == BUCKETS - 1 ? h.positives : count + h.counts[bucket];
    }
}

// --- the draws --------------------------------------------------------------------------------

// sampler.ts's drawFrom: the inverse CDF in token order.
struct InverseDraw {
    double u;
    double cumulative = 0;
    int64_t last = 0;
    int64_t found = -1;
    // false once the token is found
    bool offer(int64_t token, double p) {
        if (p <= 0) return true;
        cumulative += p;
        last = token;
        if (u < cumulative) {
            found = token;
            return false;
        }
        return true;
    }
    int64_t result() const { return found >= 0 ? found : last; }
};

// noise.ts's mix32, tokenUniform and exponential race (one winner).
inline uint32_t mix32(uint32_t x) {
    x = (x ^ (x >> 16)) * 0x85ebca6bu;
    x = (x ^ (x >> 13)) * 0xc2b2ae35u;
    return x ^ (x >> 16);
}

inline double tokenUniform(uint32_t key, uint32_t token) {
    const uint32_t a = mix32(key ^ ((token + 1u) * 0x9e3779b9u));
    const uint32_t b = mix32(a ^ 0x5bd1e995u);
    return (double(a >> 5) * 67108864.0 + double(b >> 6) + 0.5) / 9007199254740992.0;
}

struct ExponentialRace {
    uint32_t key;
    double bound = INFINITY;
    int64_t best = -1;
    bool offer(int64_t token, double w) {
        if (!(w > 0)) return true;
        const double u = tokenUniform(key, uint32_t(token));
        const double x = w * bound;
        // exp(-x) >= 1 - x: this token's ratio cannot beat the bound.
        if (x < 1 && u <= 1 - x * (1 + 1e-9) - 1e-15) return true;
        const double ratio = -std::log(u) / w;
        // An equal ratio goes to the lower token id, in whatever order tokens are offered.
        if (!(ratio < bound || (ratio == bound && token < best))) return true;
        best = token;
        bound = ratio;
        return true;
    }
    int64_t result() const { return best; }
};

template <typename Draw>
int64_t drawDense(const double* probs, size_t n, Draw draw) {
    for (size_t i = 0; i < n; i++) if (!draw.offer(int64_t(i), probs[i])) break;
    return draw.result();
}

template <typename Draw>
int64_t drawSparse(const std::vector<std::pair<int32_t, double>>& kept, Draw draw) {
    for (const auto& [token, p] : kept) if (!draw.offer(token, p)) break;
    return draw.result();
}

// A token's probability as samplingDistribution gives it without truncation: its exponential
// over softmaxInto's total (the same operations, so the same bits).
struct Softmax {
    const float* logits;
    float max;
    double temperature;
    double total;
    double ofLogit(float logit) const { return weightOf(logit, max, temperature) / total; }
    double of(size_t token) const { return ofLogit(logits[token]); }
};

// The exponential race over softmax(logits / T) without writing the distribution down: the
// argmax runs first, which sets a tight bound; then each block of 64 tokens is passed over when
// even its largest logit, with the largest uniform any of its tokens can have (read off the
// first hash word alone), cannot pass ExponentialRace's cheap test; the other blocks are offered
// token by token. A token passed over would have been passed over by that test, so the winner
// is the race's over the whole distribution in token order, ties to the lower token id included.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
int64_t raceSoftmax(const Softmax& sm, size_t n, uint32_t key) {
    ExponentialRace race{key};
    const size_t top = argmaxOf(sm.logits, n);
    race.offer(int64_t(top), sm.of(top));
    constexpr size_t BLOCK = 64;
    for (size_t start = 0; start < n; start += BLOCK) {
        const size_t count = std::min(BLOCK, n - start);
        const float* l = sm.logits + start;
        float largest = -INFINITY;
        for (size_t j = 0; j < count; j++) largest = l[j] > largest ? l[j] : largest;
        if (!(largest > -INFINITY)) continue;  // no token here has a probability
        uint32_t high = 0;
        for (size_t j = 0; j < count; j++) {
            const uint32_t a = mix32(key ^ ((uint32_t(start + j) + 1u) * 0x9e3779b9u)) >> 5;
            high = a > high ? a : high;
        }
        // u < (a >> 5 + 1) / 2^27 (tokenUniform's second word adds less than 2^26 / 2^53); each
        // token's probability is at most the largest logit's (1e-13: exp's last bits).
        const double uAbove = (double(high) + 1) / 134217728.0;
        const double x = sm.ofLogit(largest) * (1 + 1e-13) * race.bound;
        if (x < 1 && uAbove <= 1 - x * (1 + 1e-9) - 1e-15) continue;
        for (size_t j = 0; j < count; j++) race.offer(int64_t(start + j), sm.of(start + j));
    }
    return race.result();
}

// The inverse-CDF draw over softmax(logits / T) in token order (drawDense over softmaxInto's
// distribution), the probabilities computed a block at a time as the walk reaches them.
int64_t drawSoftmax(const Softmax& sm, size_t n, double u) {
    InverseDraw draw{u};
    constexpr size_t BLOCK = 256;
    double block[BLOCK];
    for (size_t start = 0; start < n; start += BLOCK) {
        const size_t count = std::min(BLOCK, n - start);
        exponentials(sm.logits + start, count, sm.max, sm.temperature, block);
        for (size_t j = 0; j < count; j++) if (!draw.offer(int64_t(start + j), block[j] / sm.total)) return draw.result();
    }
    return draw.result();
}

// Top-p and min-p as truncate() cuts, without the dense distribution: the full-sort rules
// (cutWithin) need only the probabilities at or above a floor that the cut lies above. Those
// tokens are found by their logits (a probability p needs a logit of at least
// max + T·ln(p·total)), the floor starting 2^-12 below the largest probability and dropping by
// as much until the cut is found; among them, truncate()'s octave histogram picks which to sort.
// The kept tokens, renormalised, in token order, into kept; false (nothing kept) where the
// candidates grow past an eighth of the vocabulary: a flat distribution, whose cut the dense
// distribution finds sooner (vector exponentials, not one at a time).
struct TruncationScratch {
    std::vector<std::pair<int32_t, double>> candidates;
    std::vector<double> values;
    std::vector<double> sorted;
    Octaves octaves;
};

bool truncatedTokens(const Softmax& sm, size_t n, size_t positives, const Sampling& s, TruncationScratch& t, std::vector<std::pair<int32_t, double>>& kept) {
    const size_t most = std::max<size_t>(n / 8, 64);
    double floor = 1 / sm.total / 4096;
    for (int round = 0;; round++) {
        // After a few rounds (or where the floor would underflow) every positive probability.
        if (round == 4 || floor < 1e-300) floor = 0;
        t.candidates.clear();
        t.values.clear();
        // 0.01 nats below the exact bound: far more than the rounding of either side.
        const float threshold = floor == 0 ? -INFINITY : std::nextafter(float(double(sm.max) + sm.temperature * (std::log(floor * sm.total) - 0.01)), -INFINITY);
        for (size_t i = nextAbove(sm.logits, 0, n, threshold); i < n; i = nextAbove(sm.logits, i + 1, n, threshold)) {
            const double p = sm.of(i);
            if (p > 0 && p >= floor) {
                t.candidates.emplace_back(int32_t(i), p);
                t.values.push_back(p);
            }
            if (t.candidates.size() > most) return false;
        }
        // The argmax is above any floor: the histogram's largest value is the distribution's.
        Octaves& h = t.octaves;
        fillOctaves(t.values.data(), t.values.size(), h);
        const double minPFloor = s.minP > 0 ? s.minP * h.max : 0;
        int bucket = 0;
        for (double mass = 0; bucket < BUCKETS - 1; bucket++) {
            mass += h.mass[bucket];
            if (s.topP < 1 ? mass >= s.topP * (1 + 1e-9) : h.floorOf(bucket) <= minPFloor) break;
        }
        for (;;) {
            const double at = std::max(h.floorOf(bucket), floor);
            t.sorted.clear();
            for (const double v : t.values) if (v >= at) t.sorted.push_back(v);
            std::sort(t.sorted.begin(), t.sorted.end(), std::greater<double>());
            const long keep = cutWithin(t.sorted, positives, s.topP, minPFloor, at);
            if (keep >= 0) {
                double mass = 0;
                for (long r = 0; r < keep; r++) mass += t.sorted[r];
                const double last = t.sorted[keep - 1];
                long ties = 0;
                for (long r = keep - 1; r >= 0 && t.sorted[r] == last; r--) ties++;
                kept.clear();
                for (const auto& [token, p] : t.candidates) if (p > last || (p == last && ties-- > 0)) kept.emplace_back(token, p / mass);
                return true;
            }
            if (at <= floor) break;  // the cut lies below the candidates: lower the floor
            bucket = std::min(bucket + 1, BUCKETS - 1);
        }
        floor /= 4096;
    }
}

struct Scratch {
    TruncationScratch truncation;
    std::vector<double> probs;
    std::vector<double> values;
    std::vector<int32_t> candidates;
    std::vector<int32_t> tokens;
    std::vector<double> weights;
    std::vector<std::pair<int32_t, double>> kept;
    Octaves octaves;
};

Scratch& scratch() {
    // Per thread: the decode threads' generation loops (AddonFlockDecode.cpp) sample too.
    thread_local Scratch s;
    return s;
}

// sampler.ts's samplingDistribution into out (n values); false when no token has a positive
// probability.
bool samplingDistribution(const float* logits, size_t n, const Sampling& s, double* out) {
    Scratch& sc = scratch();
    if (s.temperature == 0) {
        std::fill(out, out + n, 0.0);
        out[argmaxOf(logits, n)] = 1;
        return true;
    }
    if (s.topK > 0 && s.topK < n) {
        largestLogits(logits, n, s.topK, sc.candidates);
        if (!topKDistribution(logits, s, sc.candidates, sc.tokens, sc.weights, sc.kept)) return false;
        std::fill(out, out + n, 0.0);
        for (const auto& [token, p] : sc.kept) out[token] = p;
        return true;
    }
    if (softmaxInto(logits, n, s.temperature, out) == 0) return false;
    if (s.topP < 1 || s.minP > 0) truncate(out, n, s.topP, s.minP, sc.octaves, sc.values);
    return true;
}

// One token from samplingDistribution(logits, s): drawn by the inverse CDF at u, or by the
// exponential race keyed by key; -1 when no token has a positive probability.
int64_t sampleToken(const float* logits, size_t n, const Sampling& s, bool keyed, double u, uint32_t key) {
    if (s.temperature == 0) return int64_t(argmaxOf(logits, n));
    Scratch& sc = scratch();
    if (s.topK > 0 && s.topK < n) {
        largestLogits(logits, n, s.topK, sc.candidates);
        if (!topKDistribution(logits, s, sc.candidates, sc.tokens, sc.weights, sc.kept)) return -1;
        return keyed ? drawSparse(sc.kept, ExponentialRace{key}) : drawSparse(sc.kept, InverseDraw{u});
    }
    // softmax(logits / T), truncated or not, without writing the vocabulary's distribution down.
    const float max = maxOf(logits, n);
    if (max == -INFINITY) return -1;
    const Total total = exponentialTotal(logits, n, max, s.temperature);
    const Softmax sm{logits, max, s.temperature, total.total};
    if (s.topP < 1 || s.minP > 0) {
        if (truncatedTokens(sm, n, total.positives, s, sc.truncation, sc.kept)) {
            return keyed ? drawSparse(sc.kept, ExponentialRace{key}) : drawSparse(sc.kept, InverseDraw{u});
        }
        if (sc.probs.size() < n) sc.probs.resize(n);
        double* probs = sc.probs.data();
        samplingDistribution(logits, n, s, probs);
        return keyed ? drawDense(probs, n, ExponentialRace{key}) : drawDense(probs, n, InverseDraw{u});
    }
    return keyed ? raceSoftmax(sm, n, key) : drawSoftmax(sm, n, u);
}

bool isFloat32Array(const Napi::Value& v) { return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array; }
bool isFloat64Array(const Napi::Value& v) { return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array; }

// The sampling settings at info[first .. first + 3]: temperature, topK, topP, minP.
Sampling samplingAt(const Napi::CallbackInfo& info, size_t first) {
    const double topK = info[first + 1].As<Napi::Number>().DoubleValue();
    return Sampling{info[first].As<Napi::Number>().DoubleValue(), topK > 0 ? size_t(topK) : 0, info[first + 2].As<Napi::Number>().DoubleValue(),
                    info[first + 3].As<Napi::Number>().DoubleValue()};
}

bool numbersAt(const Napi::CallbackInfo& info, size_t first, size_t count) {
    for (size_t i = first; i < first + count; i++) if (!info[i].IsNumber()) return false;
    return true;
}

Napi::Value usage(const Napi::Env& env, const char* signature) {
    Napi::TypeError::New(env, signature).ThrowAsJavaScriptException();
    return env.Undefined();
}

}  // namespace

// flockSampleToken's draw for C++ callers (the generation loop of AddonFlockDecode.cpp).
int64_t flockSampleTokenAt(const float* logits, size_t n, double temperature, double topK, double topP, double minP, bool keyed, double value) {
    if (n == 0) return -1;
    const Sampling s{temperature, topK > 0 ? size_t(topK) : 0, topP, minP};
    return sampleToken(logits, n, s, keyed, value, keyed ? uint32_t(int64_t(value)) : 0);
}

// flockSoftmax(logits, temperature, out): out[i] = exp((logits[i] - max) / T) / total, in double,
// the same arithmetic as decoding/sampler.ts's softmax (which stays the reference: the results
// differ at most by exp's last bit); returns the total, 0 when no token has a finite logit.
// Synchronous: one pass over a vocabulary takes about a millisecond at 151,936 tokens, a third of
// what the same loop costs in JavaScript.
Napi::Value flockSoftmax(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray()) {
        Napi::TypeError::New(env, "flockSoftmax(logits: Float32Array, temperature: number, out: Float64Array)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::TypedArray logitsArray = info[0].As<Napi::TypedArray>();
    Napi::TypedArray outArray = info[2].As<Napi::TypedArray>();
    if (logitsArray.TypedArrayType() != napi_float32_array || outArray.TypedArrayType() != napi_float64_array || logitsArray.ElementLength() != outArray.ElementLength()) {
        Napi::TypeError::New(env, "flockSoftmax: a Float32Array of logits and a Float64Array of the same length").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const float* logits = info[0].As<Napi::Float32Array>().Data();
    double* out = info[2].As<Napi::Float64Array>().Data();
    return Napi::Number::New(env, softmaxInto(logits, logitsArray.ElementLength(), info[1].As<Napi::Number>().DoubleValue(), out));
}

// flockSampleToken(logits, temperature, topK, topP, minP, keyed, value): the token sampler.ts's
// sampleToken (keyed false, value the RNG's uniform) or noise.ts's keyedSample (keyed true,
// value the position's 32-bit noise key) picks from these (already adjusted) logits; -1 when no
// token has a positive probability. The whole position in one call: at 151,936 tokens and
// temperature 1 about a third of the TypeScript path's time.
Napi::Value flockSampleToken(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 7 || !isFloat32Array(info[0]) || !numbersAt(info, 1, 4) || !info[5].IsBoolean() || !info[6].IsNumber()) {
        return usage(env, "flockSampleToken(logits: Float32Array, temperature, topK, topP, minP: number, keyed: boolean, value: number)");
    }
    const Napi::Float32Array logits = info[0].As<Napi::Float32Array>();
    const size_t n = logits.ElementLength();
    if (n == 0) return Napi::Number::New(env, -1);
    const bool keyed = info[5].As<Napi::Boolean>().Value();
    const double value = info[6].As<Napi::Number>().DoubleValue();
    const int64_t token = sampleToken(logits.Data(), n, samplingAt(info, 1), keyed, value, keyed ? uint32_t(int64_t(value)) : 0);
    return Napi::Number::New(env, double(token));
}

// flockSamplingDistribution(logits, temperature, topK, topP, minP, out): sampler.ts's
// samplingDistribution into out (a Float64Array of the vocabulary's size); false when no token
// has a positive probability.
Napi::Value flockSamplingDistribution(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 6 || !isFloat32Array(info[0]) || !numbersAt(info, 1, 4) || !isFloat64Array(info[5]) ||
        info[0].As<Napi::TypedArray>().ElementLength() != info[5].As<Napi::TypedArray>().ElementLength()) {
        return usage(env, "flockSamplingDistribution(logits: Float32Array, temperature, topK, topP, minP: number, out: Float64Array of the same length)");
    }
    const Napi::Float32Array logits = info[0].As<Napi::Float32Array>();
    const size_t n = logits.ElementLength();
    if (n == 0) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, samplingDistribution(logits.Data(), n, samplingAt(info, 1), info[5].As<Napi::Float64Array>().Data()));
}

// flockDrawFrom(probs, u): sampler.ts's drawFrom at the uniform u (the inverse CDF in token order).
Napi::Value flockDrawFrom(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 2 || !isFloat64Array(info[0]) || !info[1].IsNumber()) return usage(env, "flockDrawFrom(probs: Float64Array, u: number)");
    const Napi::Float64Array probs = info[0].As<Napi::Float64Array>();
    return Napi::Number::New(env, double(drawDense(probs.Data(), probs.ElementLength(), InverseDraw{info[1].As<Napi::Number>().DoubleValue()})));
}

// flockResidualMass(p, q): Σ max(p − q, 0) in token order (verifier.ts's drawResidual, first pass).
Napi::Value flockResidualMass(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 2 || !isFloat64Array(info[0]) || !isFloat64Array(info[1]) ||
        info[0].As<Napi::TypedArray>().ElementLength() != info[1].As<Napi::TypedArray>().ElementLength()) {
        return usage(env, "flockResidualMass(p: Float64Array, q: Float64Array of its length)");
    }
    const double* p = info[0].As<Napi::Float64Array>().Data();
    const double* q = info[1].As<Napi::Float64Array>().Data();
    const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
    double total = 0;
    for (size_t x = 0; x < n; x++) {
        const double r = p[x] - q[x];
        if (r > 0) total += r;
    }
    return Napi::Number::New(env, total);
}

// flockDrawResidual(p, q, total, u): verifier.ts's draw from norm(max(p − q, 0)) at the uniform
// u, total being flockResidualMass(p, q) > 0: the inverse CDF over (p − q) / total in token order,
// without the residual array.
Napi::Value flockDrawResidual(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 4 || !isFloat64Array(info[0]) || !isFloat64Array(info[1]) || !numbersAt(info, 2, 2) ||
        info[0].As<Napi::TypedArray>().ElementLength() != info[1].As<Napi::TypedArray>().ElementLength()) {
        return usage(env, "flockDrawResidual(p: Float64Array, q: Float64Array of its length, total: number, u: number)");
    }
    const double* p = info[0].As<Napi::Float64Array>().Data();
    const double* q = info[1].As<Napi::Float64Array>().Data();
    const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
    const double total = info[2].As<Napi::Number>().DoubleValue();
    InverseDraw draw{info[3].As<Napi::Number>().DoubleValue()};
    for (size_t x = 0; x < n; x++) {
        const double r = p[x] - q[x];
        if (r > 0 && !draw.offer(int64_t(x), r / total)) break;
    }
    return Napi::Number::New(env, double(draw.result()));
}

// Σ q_i·logits_i·scale over the tokens with q_i > 0, in LaneSum's order (features.ts adds in it).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static double expectedScaledLogit(const double* q, const float* logits, size_t n, double scale) {
    LaneSum sum;
    // A token without probability adds nothing (its logit may be −∞: 0·−∞ would be NaN).
    sum.add(n, [&](size_t i) { return q[i] > 0 ? q[i] * logits[i] * scale : 0.0; });
    return sum.total();
}

// flockDistributionSummary(q, logits, scale, topTokens, topProbs): speculative/features.ts's pass
// over a draft distribution: its most likely tokens (as many as topTokens holds, most likely
// first, ties by token id) into topTokens/topProbs, and [how many, Σ q_i·logits_i·scale, the first
// token with q > 0] as a Float64Array.
Napi::Value flockDistributionSummary(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (info.Length() < 5 || !isFloat64Array(info[0]) || !isFloat32Array(info[1]) || !info[2].IsNumber() || !info[3].IsTypedArray() ||
        info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array || !isFloat64Array(info[4]) ||
        info[0].As<Napi::TypedArray>().ElementLength() != info[1].As<Napi::TypedArray>().ElementLength() ||
        info[3].As<Napi::TypedArray>().ElementLength() != info[4].As<Napi::TypedArray>().ElementLength()) {
        return usage(env, "flockDistributionSummary(q: Float64Array, logits: Float32Array of its length, scale: number, topTokens: Int32Array, topProbs: Float64Array of its length)");
    }
    const double* q = info[0].As<Napi::Float64Array>().Data();
    const float* logits = info[1].As<Napi::Float32Array>().Data();
    const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
    const double scale = info[2].As<Napi::Number>().DoubleValue();
    int32_t* topTokens = info[3].As<Napi::Int32Array>().Data();
    double* topProbs = info[4].As<Napi::Float64Array>().Data();
    const size_t capacity = info[3].As<Napi::TypedArray>().ElementLength();
    size_t count = 0;
    const double expectedLogit = expectedScaledLogit(q, logits, n, scale);
    int64_t anchor = -1;
    for (size_t i = 0; i < n; i++) {
        const double p = q[i];
        if (p <= 0) continue;
        if (anchor < 0) anchor = int64_t(i);
        if (capacity == 0 || (count == capacity && p <= topProbs[capacity - 1])) continue;
        size_t at = count < capacity ? count : capacity - 1;
        if (count < capacity) count++;
        while (at > 0 && topProbs[at - 1] < p) {
            topProbs[at] = topProbs[at - 1];
            topTokens[at] = topTokens[at - 1];
            at--;
        }
        topProbs[at] = p;
        topTokens[at] = int32_t(i);
    }
    Napi::Float64Array result = Napi::Float64Array::New(env, 3);
    result[0] = double(count);
    result[1] = expectedLogit;
    result[2] = double(anchor);
    return result;
}
