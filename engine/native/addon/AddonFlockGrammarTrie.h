// A grammar mask as one walk over a trie of the vocabulary's code points (AddonFlockGrammar.cpp
// computes a state's mask with it on the state's first visit). llama.cpp's pass
// (llama_grammar_reject_candidates) walks every token's characters one level at a time, copying
// the surviving tokens at each level; over a trie, tokens that share a prefix share the grammar's
// work on it, and a character the grammar rejects prunes every token below it at once — between
// JSON fields, where a few characters may come next, nearly the whole vocabulary at the root.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "llama-grammar.h"

struct FlockVocabTrie {
    struct Node {
        uint32_t childBegin, childEnd;  // into childCodePoint/childNode, code points ascending
        uint32_t endBegin, endEnd;      // into endToken: the tokens whose code points end here
    };
    std::vector<Node> nodes;  // nodes[0] is the root
    std::vector<uint32_t> childCodePoint;
    std::vector<uint32_t> childNode;
    std::vector<uint32_t> endToken;
    std::vector<llama_partial_utf8> endPartial;  // the UTF-8 bytes each ends in, of a character to come

    // tokens: the ids to file; codePoints + offsets[id]: that token's code points, ended by 0;
    // partial[id]: the bytes of an unfinished character after them.
    FlockVocabTrie(std::vector<uint32_t> tokens, const uint32_t* codePoints, const size_t* offsets, const llama_partial_utf8* partial);

private:
    uint32_t build(const std::vector<uint32_t>& tokens, size_t lo, size_t hi, size_t depth, const uint32_t* codePoints, const size_t* offsets, const llama_partial_utf8* partial);
};

// Whether the grammar has token elements (<[id]>), which the trie walk does not read.
bool flockGrammarHasTokenElements(const llama_grammar& grammar);

// Sets the bit of every token in the trie that the grammar's stacks allow next, as
// llama_grammar_reject_candidates would leave it: its code points match a path through the
// grammar, and the partial UTF-8 it ends in may still complete a character there. For a state
// with no bytes pending and no token elements. Stops, returning false, once it has visited more
// than maxNodes nodes of the trie (allowed is then incomplete).
bool flockTrieMask(const llama_grammar& grammar, const FlockVocabTrie& trie, std::vector<uint64_t>& allowed, size_t maxNodes = SIZE_MAX);

// Whether only a few characters may come next: every stack's top is a plain class (no negated
// class, no `.`), as between JSON fields. The walk is then short, unless a class is wide.
bool flockGrammarNarrow(const llama_grammar& grammar);
