// The trie walk behind a grammar state's first mask (AddonFlockGrammarTrie.h).
#include "AddonFlockGrammarTrie.h"

#include <algorithm>
#include <array>
#include <deque>
#include <map>
#include <utility>

FlockVocabTrie::FlockVocabTrie(std::vector<uint32_t> tokens, const uint32_t* codePoints, const size_t* offsets, const llama_partial_utf8* partial) {
    // Sorted by code points, a token before its extensions: each node's tokens and children are
    // then runs of the sorted list.
    std::sort(tokens.begin(), tokens.end(), [&](uint32_t a, uint32_t b) {
        const uint32_t* x = codePoints + offsets[a];
        const uint32_t* y = codePoints + offsets[b];
        while (*x != 0 && *x == *y) x++, y++;
        return *x != *y ? *x < *y : a < b;
    });
    nodes.reserve(tokens.size() * 2);
    build(tokens, 0, tokens.size(), 0, codePoints, offsets, partial);
}

uint32_t FlockVocabTrie::build(const std::vector<uint32_t>& tokens, size_t lo, size_t hi, size_t depth, const uint32_t* codePoints, const size_t* offsets, const llama_partial_utf8* partial) {
    const auto at = [&](size_t i) { return codePoints[offsets[tokens[i]] + depth]; };
    const uint32_t node = uint32_t(nodes.size());
    nodes.push_back(Node {});
    nodes[node].endBegin = uint32_t(endToken.size());
    size_t i = lo;
    for (; i < hi && at(i) == 0; i++) {
        endToken.push_back(tokens[i]);
        endPartial.push_back(partial[tokens[i]]);
    }
    nodes[node].endEnd = uint32_t(endToken.size());
    std::vector<std::pair<size_t, size_t>> runs;
    for (size_t j = i; j < hi;) {
        size_t k = j;
        while (k < hi && at(k) == at(j)) k++;
        runs.emplace_back(j, k);
        j = k;
    }
    const uint32_t begin = uint32_t(childCodePoint.size());
    for (const auto& run : runs) {
        childCodePoint.push_back(at(run.first));
        childNode.push_back(0);
    }
    nodes[node].childBegin = begin;
    nodes[node].childEnd = begin + uint32_t(runs.size());
    for (size_t r = 0; r < runs.size(); r++) childNode[begin + r] = build(tokens, runs[r].first, runs[r].second, depth + 1, codePoints, offsets, partial);
    return node;
}

bool flockGrammarHasTokenElements(const llama_grammar& grammar) {
    for (const auto& rule : grammar.rules) {
        for (const auto& element : rule) {
            if (element.type == LLAMA_GRETYPE_TOKEN || element.type == LLAMA_GRETYPE_TOKEN_NOT) return true;
        }
    }
    return false;
}

namespace {

// llama-grammar.cpp's llama_grammar_match_char and llama_grammar_match_partial_char (static
// there), as they are: whether a character, or some completion of a partial UTF-8 sequence,
// satisfies the character class at pos.
bool matchChar(const llama_grammar_element* pos, uint32_t chr) {
    bool found = false;
    const bool positive = pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_ANY;
    do {
        if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
            found = found || (pos->value <= chr && chr <= pos[1].value);
            pos += 2;
        } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
            found = true;
            pos += 1;
        } else {
            found = found || pos->value == chr;
            pos += 1;
        }
    } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
    return found == positive;
}

bool matchPartialChar(const llama_grammar_element* pos, llama_partial_utf8 partial) {
    const bool positive = pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_ANY;
    const uint32_t value = partial.value;
    const int remain = partial.n_remain;
    if (remain < 0 || (remain == 1 && value < 2)) return false;
    uint32_t low = value << (remain * 6);
    const uint32_t high = low | ((1 << (remain * 6)) - 1);
    if (low == 0) {
        if (remain == 2) low = 1 << 11;
        else if (remain == 3) low = 1 << 16;
    }
    do {
        if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
            if (pos->value <= high && low <= pos[1].value) return positive;
            pos += 2;
        } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
            return true;
        } else {
            if (low <= pos->value && pos->value <= high) return positive;
            pos += 1;
        }
    } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
    return !positive;
}

bool isEndOfSequence(const llama_grammar_element* pos) {
    return pos->type == LLAMA_GRETYPE_END || pos->type == LLAMA_GRETYPE_ALT;
}

// The element after the character class at pos.
const llama_grammar_element* afterClass(const llama_grammar_element* pos) {
    do pos += pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER ? 2 : 1;
    while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
    return pos;
}

// llama-grammar.cpp's llama_grammar_advance_stack (static there): the stacks `stack` expands to,
// each ending at a terminal (or empty), added to `out` where new. The stacks it has seen are kept
// in a vector: a call here sees a handful, where llama.cpp's std::set allocates for each.
void advanceStack(const llama_grammar_rules& rules, llama_grammar_stack stack, llama_grammar_stacks& out) {
    std::vector<llama_grammar_stack> todo;
    todo.push_back(std::move(stack));
    std::vector<llama_grammar_stack> seen;
    while (!todo.empty()) {
        llama_grammar_stack current = std::move(todo.back());
        todo.pop_back();
        if (std::find(seen.begin(), seen.end(), current) != seen.end()) continue;
        seen.push_back(current);
        if (current.empty() || current.back()->type != LLAMA_GRETYPE_RULE_REF) {
            // A terminal on top (a grammar with another element there does not parse).
            if (std::find(out.begin(), out.end(), current) == out.end()) out.push_back(std::move(current));
            continue;
        }
        const llama_grammar_element* pos = current.back();
        const llama_grammar_element* alternative = rules[pos->value].data();
        while (true) {
            llama_grammar_stack next(current.begin(), current.end() - 1);
            if (!isEndOfSequence(pos + 1)) next.push_back(pos + 1);
            if (!isEndOfSequence(alternative)) next.push_back(alternative);
            todo.push_back(std::move(next));
            while (!isEndOfSequence(alternative)) alternative++;
            if (alternative->type != LLAMA_GRETYPE_ALT) break;
            alternative++;
        }
    }
}

// Where the classes at pos change their answer: the first code point of each range and the one
// after it (`.` has none).
void boundariesOf(const llama_grammar_element* pos, std::vector<uint32_t>& boundaries) {
    do {
        if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
            boundaries.push_back(pos->value);
            boundaries.push_back(pos[1].value + 1);
            pos += 2;
        } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
            pos += 1;
        } else {
            boundaries.push_back(pos->value);
            boundaries.push_back(pos->value + 1);
            pos += 1;
        }
    } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
}

// The walk. Stacks are interned (a stack id per distinct stack) and so are sets of them (the
// stacks a prefix can be in). What a stack becomes after a character its top accepts does not
// depend on the character (the position after a class is fixed), so it is computed once per
// stack; and a set's tops agree on every code point between two of their classes' boundaries,
// so a set's successor is computed once per such interval, and the children in an interval no
// top accepts are never looked at.
class TrieMaskWalk {
public:
    TrieMaskWalk(const llama_grammar& grammar, const FlockVocabTrie& trie, std::vector<uint64_t>& allowed, size_t maxNodes)
        : grammar(grammar), trie(trie), allowed(allowed), nodesLeft(maxNodes) {}

    // Whether the walk finished within its nodes.
    bool run(const llama_grammar_stacks& start) {
        std::vector<uint32_t> ids;
        for (const auto& stack : start) ids.push_back(stackId(stack));
        visit(0, sets[setId(std::move(ids))]);
        return !stopped;
    }

private:
    static constexpr int64_t UNKNOWN = -1;

    struct Set;
    struct Interval {
        uint32_t low, high;     // code points, inclusive
        bool accepted;          // by some top of the set
        Set* next = nullptr;    // the set after one of them, once known
    };
    struct Set {
        std::vector<uint32_t> stacks;                    // ids, ascending
        std::vector<const llama_grammar_element*> tops;  // of its non-empty stacks
        std::vector<uint32_t> topStacks;                 // the stack of each top
        std::vector<Interval> intervals;                 // ascending, covering every code point
        std::array<uint16_t, 128> ascii;                 // the interval of each ASCII code point
    };

    const llama_grammar& grammar;
    const FlockVocabTrie& trie;
    std::vector<uint64_t>& allowed;
    size_t nodesLeft;
    bool stopped = false;

    // Deques: references to a stack or set stay valid while the walk adds more.
    std::map<llama_grammar_stack, uint32_t> stackIds;
    std::deque<llama_grammar_stack> stacks;
    std::vector<int64_t> afterChar;  // the set after a character its top accepts, UNKNOWN until asked
    std::map<std::vector<uint32_t>, uint32_t> setIds;
    std::deque<Set> sets;

    uint32_t stackId(const llama_grammar_stack& stack) {
        auto found = stackIds.find(stack);
        if (found != stackIds.end()) return found->second;
        const uint32_t id = uint32_t(stacks.size());
        stackIds.emplace(stack, id);
        stacks.push_back(stack);
        afterChar.push_back(UNKNOWN);
        return id;
    }

    uint32_t setId(std::vector<uint32_t> ids) {
        std::sort(ids.begin(), ids.end());
        ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
        auto found = setIds.find(ids);
        if (found != setIds.end()) return found->second;
        const uint32_t id = uint32_t(sets.size());
        Set set;
        std::vector<uint32_t> boundaries = { 0 };
        for (const uint32_t stack : ids) {
            if (stacks[stack].empty()) continue;
            set.tops.push_back(stacks[stack].back());
            set.topStacks.push_back(stack);
            boundariesOf(stacks[stack].back(), boundaries);
        }
        std::sort(boundaries.begin(), boundaries.end());
        boundaries.erase(std::unique(boundaries.begin(), boundaries.end()), boundaries.end());
        for (size_t b = 0; b < boundaries.size(); b++) {
            const uint32_t high = b + 1 < boundaries.size() ? boundaries[b + 1] - 1 : UINT32_MAX;
            Interval interval { boundaries[b], high, false };
            for (const llama_grammar_element* top : set.tops) interval.accepted = interval.accepted || matchChar(top, interval.low);
            set.intervals.push_back(interval);
        }
        for (uint32_t c = 0, i = 0; c < 128; c++) {
            while (set.intervals[i].high < c) i++;
            set.ascii[c] = uint16_t(std::min<size_t>(i, UINT16_MAX));
        }
        setIds.emplace(ids, id);
        set.stacks = std::move(ids);
        sets.push_back(std::move(set));
        return id;
    }

    // The stacks after a character the stack's top accepts (llama_grammar_accept's step): the
    // top moved past its class, then advanced to terminals.
    uint32_t after(uint32_t stack) {
        if (afterChar[stack] != UNKNOWN) return uint32_t(afterChar[stack]);
        llama_grammar_stack moved(stacks[stack].begin(), stacks[stack].end() - 1);
        const llama_grammar_element* pos = afterClass(stacks[stack].back());
        if (!isEndOfSequence(pos)) moved.push_back(pos);
        llama_grammar_stacks advanced;
        advanceStack(grammar.rules, std::move(moved), advanced);
        std::vector<uint32_t> ids;
        for (const auto& next : advanced) ids.push_back(stackId(next));
        const uint32_t id = setId(std::move(ids));
        afterChar[stack] = id;
        return id;
    }

    // The set after a character of the interval: the union of what each top that accepts it becomes.
    Set& next(Set& set, Interval& interval) {
        std::vector<uint32_t> ids;
        for (size_t i = 0; i < set.tops.size(); i++) {
            if (!matchChar(set.tops[i], interval.low)) continue;
            const Set& after = sets[this->after(set.topStacks[i])];
            ids.insert(ids.end(), after.stacks.begin(), after.stacks.end());
        }
        interval.next = &sets[setId(std::move(ids))];
        return *interval.next;
    }

    void allow(uint32_t token) { allowed[token / 64] |= uint64_t(1) << (token % 64); }

    void visit(uint32_t nodeIndex, Set& set) {
        if (stopped || nodesLeft-- == 0) {
            stopped = true;
            return;
        }
        const FlockVocabTrie::Node node = trie.nodes[nodeIndex];
        // Tokens whose code points end here: allowed unless they end in a partial character
        // that no top here could complete.
        for (uint32_t e = node.endBegin; e < node.endEnd; e++) {
            const uint32_t token = trie.endToken[e];
            if (trie.endPartial[e].n_remain == 0) {
                allow(token);
                continue;
            }
            for (const llama_grammar_element* top : set.tops) {
                if (matchPartialChar(top, trie.endPartial[e])) {
                    allow(token);
                    break;
                }
            }
        }
        if (node.childBegin == node.childEnd || set.tops.empty()) return;
        const uint32_t* codePoints = trie.childCodePoint.data();
        const uint32_t* first = codePoints + node.childBegin;
        const uint32_t* last = codePoints + node.childEnd;
        if (last - first <= 4 && set.intervals.size() < UINT16_MAX) {
            // A few children (most nodes): each one's interval, by table or binary search.
            for (; first != last; ++first) {
                const uint32_t chr = *first;
                Interval& interval = chr < 128 ? set.intervals[set.ascii[chr]]
                    : *std::partition_point(set.intervals.begin(), set.intervals.end(), [chr](const Interval& i) { return i.high < chr; });
                if (interval.accepted) visit(trie.childNode[first - codePoints], interval.next != nullptr ? *interval.next : next(set, interval));
            }
            return;
        }
        for (Interval& interval : set.intervals) {
            if (!interval.accepted || first == last) continue;
            if (*first < interval.low) first = std::lower_bound(first, last, interval.low);
            for (; first != last && *first <= interval.high; ++first) {
                visit(trie.childNode[first - codePoints], interval.next != nullptr ? *interval.next : next(set, interval));
            }
        }
    }
};

}  // namespace

bool flockTrieMask(const llama_grammar& grammar, const FlockVocabTrie& trie, std::vector<uint64_t>& allowed, size_t maxNodes) {
    return TrieMaskWalk(grammar, trie, allowed, maxNodes).run(grammar.stacks);
}

bool flockGrammarNarrow(const llama_grammar& grammar) {
    for (const auto& stack : grammar.stacks) {
        if (!stack.empty() && stack.back()->type != LLAMA_GRETYPE_CHAR) return false;
    }
    return true;
}
