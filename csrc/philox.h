// Counter-based dropout mask of the fused attention kernels (host and device).
//
// The pair (query i, key j) of head bh (= b * H + h over the whole batch) is kept when word
//     w = 2 * ((i >> 3) & 1) + ((j >> 3) & 1)
// of Philox4x32-10(key = seed, counter = (jb, ib, bh, offset)), with ib = (i >> 4) * 8 + (i & 7) and
// jb likewise, read as a uniform float in [0, 1), is >= p. One Philox call therefore covers the four pairs
// {i, i + 8} x {j, j + 8} (i, j with bit 3 clear): exactly what one thread holds of a 16 x 16 tile in the
// mma.sync accumulator layout, whether its rows are queries (forward, dQ) or keys (dK/dV). The mask is a
// function of (seed, offset, bh, i, j) alone, so every kernel and the test hook agree whatever their tiles.
// The word -> float conversion is Triton's uint_to_uniform_float (the same fp32 operations).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DF_HOST_DEVICE inline
#endif

namespace deberta_fast {

struct Philox4 {
  uint32_t w[4];
};

DF_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds (Salmon et al.), the constants of Random123 / curand / Triton.
DF_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0);
    const uint32_t lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2);
    const uint32_t lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A random word as a float in [0, 1) (Triton's uint_to_uniform_float for 32-bit words).
DF_HOST_DEVICE float word_to_uniform(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Dropout state of one call: the 64-bit seed (Philox key) and the low word of the offset.
struct DropoutKey {
  uint32_t k0, k1, offset;
  float p;
};

DF_HOST_DEVICE DropoutKey make_dropout_key(int64_t seed, int64_t offset, float p) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return DropoutKey{static_cast<uint32_t>(s & 0xffffffffu), static_cast<uint32_t>(s >> 32),
                    static_cast<uint32_t>(static_cast<uint64_t>(offset) & 0xffffffffu), p};
}

DF_HOST_DEVICE uint32_t pair_base(uint32_t i) { return ((i >> 4) << 3) | (i & 7u); }

// The four words of the pairs {i, i + 8} x {j, j + 8}: word 2 * di + dj is (i + 8 di, j + 8 dj).
// i and j must have bit 3 clear.
DF_HOST_DEVICE Philox4 dropout_words(const DropoutKey& key, uint32_t bh, uint32_t i, uint32_t j) {
  return philox4x32_10(pair_base(j), pair_base(i), bh, key.offset, key.k0, key.k1);
}

DF_HOST_DEVICE bool word_keeps(const DropoutKey& key, uint32_t word) { return word_to_uniform(word) >= key.p; }

// Whether the pair (i, j) of head bh is kept (any i, j; the test hook and the CPU reference use this).
DF_HOST_DEVICE bool dropout_keep(const DropoutKey& key, uint32_t bh, uint32_t i, uint32_t j) {
  const Philox4 r = dropout_words(key, bh, i & ~8u, j & ~8u);
  const uint32_t w = (((i >> 3) & 1u) << 1) | ((j >> 3) & 1u);
  return word_keeps(key, r.w[w]);
}

}  // namespace deberta_fast
