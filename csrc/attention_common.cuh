// What the forward and backward kernels share beside the score code (tile kinds, position terms and slot sums:
// score_terms.h): saturated values, mask bytes, the columns' prefetch and the dropout mask in the accumulator
// layout.
#pragma once

#include <cmath>
#include <cstdint>

#include "launch.h"
#include "params.h"
#include "philox.h"
#include "score_terms.h"
#include "tile.cuh"

namespace deberta_fast {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Where row n of C2P or P2C ([N, 2S], this (batch, head)) holds its saturated value: column 2S - 1 (hi) or 0.
template <typename T>
__device__ __forceinline__ const T* sat_at(const T* pos_scores, int two_s, int n, bool hi) {
  return pos_scores + static_cast<int64_t>(n) * two_s + (hi ? two_s - 1 : 0);
}

// The mask byte of position n of sequence b (the mask present).
__device__ __forceinline__ const uint8_t* mask_at(const AttnParams& p, int b, int n) {
  return p.mask + b * p.mask_stride_b + n * p.mask_stride_n;
}

template <typename T>
__device__ __forceinline__ float sat_value(const T* pos_scores, int two_s, int n, int N, bool hi) {
  if (pos_scores == nullptr || n >= N) return 0.f;
  return to_float(__ldg(sat_at(pos_scores, two_s, n, hi)));
}

__device__ __forceinline__ bool is_token(const AttnParams& p, int b, int n) {
  return n < p.N && (p.mask == nullptr || *mask_at(p, b, n) != 0);
}

// What a streamed tile needs of one of its columns (a key of the forward's and dQ kernel's key tiles, a query
// of the dK/dV kernel's query tiles), fetched into registers a tile ahead of its store to shared memory. The
// values stay raw (no conversion, no comparison) until the store, so the global loads issued in one iteration
// are waited for in the next, their latency hidden behind a tile's compute, instead of holding the whole CTA
// at the barrier that publishes the tile (one dependent load chain per tile otherwise).
template <typename T>
struct ColumnFetch {
  bool in = false;         // a position < N of a tile that exists
  uint8_t token = 0;       // its mask byte (1 without a mask)
  bool has_pos = false;    // the tile is saturated and the term present: pos holds its value
  T pos;                   // the C2P / P2C value at row 2S - 1 (SAT_HI) or 0 (SAT_LO), raw
  float lse = 0.f, delta = 0.f;  // the dK/dV kernel's per-query rows (raw)

  // Column n of a tile of kind ``mode``; pos_scores is this (batch, head)'s C2P or P2C [N, 2S] (or null).
  __device__ __forceinline__ void fetch(const AttnParams& p, int b, const T* pos_scores, int n, bool exists,
                                        int mode) {
    in = exists && n < p.N;
    has_pos = in && pos_scores != nullptr && (mode == kSatHi || mode == kSatLo);
    if (in) token = p.mask != nullptr ? __ldg(mask_at(p, b, n)) : 1;
    if (has_pos) pos = __ldg(sat_at(pos_scores, p.two_s, n, mode == kSatHi));
  }
  __device__ __forceinline__ void fetch_rows(const float* lse_row, const float* delta_row, int n) {
    if (in) {
      lse = __ldg(lse_row + n);
      delta = __ldg(delta_row + n);
    }
  }
  __device__ __forceinline__ bool is_token() const { return in && token != 0; }
  __device__ __forceinline__ float pos_value() const { return has_pos ? to_float(pos) : 0.f; }
  // A key column's term: its p2c value of the tile's kind, 0 on band tiles, -inf off the sequence's tokens.
  __device__ __forceinline__ float key_term() const { return is_token() ? pos_value() : -INFINITY; }
};

// A per-device host value, ``compute(device)`` (never 0) cached in ``cache`` (0: not computed yet); devices past
// the cache's 64 entries compute it on every call. The caller serializes calls if computing has side effects.
template <typename F>
int once_per_device(int (&cache)[64], int device, F compute) {
  int local = 0;
  int& value = device >= 0 && device < 64 ? cache[device] : local;
  if (value == 0) value = compute(device);
  return value;
}

// The current device's opt-in shared memory per block (read once per device).
inline int max_smem_optin() {
  static int cache[64] = {};
  int device = 0;
  DF_CUDA_CHECK(cudaGetDevice(&device));
  return once_per_device(cache, device, [](int d) {
    int bytes = 0;
    DF_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, d));
    return bytes;
  });
}

// A streamed tile as the staged slabs see it: whether it is a band tile (false past the last tile), and its first
// query and key.
struct StagedTile {
  bool band;
  int q0, k0;
};

// The staged band slabs of a CTA (DEBERTA_FAST_CUDA_BAND=staged; score_terms.h) whose tiles have kQ queries and kK
// keys: windows [3][kQ + kK] (int32), C2P slabs [2][kQ][kK + kChunk], P2C slabs [2][kK][kQ + kChunk] in shared memory.
// A band tile t's window is read from the table into registers two tiles ahead, stored to shared memory by the end
// of the iteration before the one that stages its slabs (stage: cp.async, in the commit group of the tile's other
// loads), read with the slabs while the tile is computed. Three window buffers: the tile being computed, the one
// being staged, the one being stored; two slab buffers, as the K / V tiles. The kernels call prime before their
// tile loop, stage with each tile's other loads, advance at the end of each iteration (before its barrier) and
// add_terms on band tiles; ``at(t)`` gives tile t's StagedTile.
template <typename T, int kQ, int kK, int kThreads>
struct StagedSlabs {
  static constexpr int kChunk = 16 / sizeof(T), kWin = kQ + kK - 1;
  static constexpr int kBytes = 3 * (kQ + kK) * 4 + 2 * (kQ * (kK + kChunk) + kK * (kQ + kChunk)) * sizeof(T);
  static constexpr int kSlots = (kWin + kThreads - 1) / kThreads;
  static_assert((kQ + kK) % 4 == 0, "the slabs start 16-byte aligned");

  int* win;
  T* c2p_slabs;
  T* p2c_slabs;
  int next[kSlots] = {};  // this thread's window slots (w = threadIdx.x + i * kThreads) of the tile fetched last

  __device__ explicit StagedSlabs(void* smem)
      : win(static_cast<int*>(smem)),
        c2p_slabs(reinterpret_cast<T*>(win + 3 * (kQ + kK))),
        p2c_slabs(c2p_slabs + 2 * kQ * (kK + kChunk)) {}

  __device__ __forceinline__ int* window(int t) const { return win + (t % 3) * (kQ + kK); }
  __device__ __forceinline__ T* c2p_slab(int t) const { return c2p_slabs + (t & 1) * kQ * (kK + kChunk); }
  __device__ __forceinline__ T* p2c_slab(int t) const { return p2c_slabs + (t & 1) * kK * (kQ + kChunk); }

  // Before the tile loop: the windows of tiles 0 and 1 stored and published by a barrier, tile 2's fetched.
  template <typename At>
  __device__ __forceinline__ void prime(const AttnParams& p, At&& at) {
    fetch(p, at, 0);
    store(at, 0);
    fetch(p, at, 1);
    store(at, 1);
    __syncthreads();
    fetch(p, at, 2);
  }
  // At the end of iteration t, before its barrier: tile t + 2's window stored (into the buffer of tile t - 1,
  // computed before the previous barrier), tile t + 3's fetched.
  template <typename At>
  __device__ __forceinline__ void advance(const AttnParams& p, At&& at, int t) {
    store(at, t + 2);
    fetch(p, at, t + 3);
  }
  // cp.async of tile t's slabs if it is a band tile (its window stored and published by a barrier); c2p / p2c: this
  // (batch, head)'s [N, 2S] rows or null.
  template <typename At>
  __device__ __forceinline__ void stage(const AttnParams& p, At&& at, int t, const T* c2p, const T* p2c) {
    const StagedTile tile = at(t);
    if (!tile.band) return;
    constexpr int kTotal = staged_c2p_chunks(kQ, kK, kChunk) + staged_p2c_chunks(kQ, kK, kChunk);
    for (int idx = threadIdx.x; idx < kTotal; idx += kThreads) {
      StagedChunk chunk;
      if (!staged_chunk(p, window(t), tile.q0, tile.k0, kQ, kK, kChunk, c2p != nullptr, p2c != nullptr, idx, chunk)) {
        continue;
      }
      cp_async_16((chunk.p2c ? p2c_slab(t) : c2p_slab(t)) + chunk.dst, (chunk.p2c ? p2c : c2p) + chunk.src,
                  chunk.valid);
    }
  }
  // add_staged_band_terms of band tile t for a warp whose rows start at row wr0 of the CTA tile (q0, k0).
  template <bool kTrans, int MF, int NF>
  __device__ __forceinline__ void add_terms(float (&s)[MF][NF][4], const AttnParams& p, int t, int q0, int k0,
                                            int wr0, int lane, const float* col_term, bool has_c2p,
                                            bool has_p2c) const {
    add_staged_band_terms<kTrans, MF, NF>(s, p, q0, k0, kQ, kK, kChunk, wr0, lane, col_term, window(t), c2p_slab(t),
                                          p2c_slab(t), has_c2p, has_p2c);
  }

 private:
  template <typename At>
  __device__ __forceinline__ void fetch(const AttnParams& p, At&& at, int t) {
    const StagedTile tile = at(t);
    if (!tile.band) return;
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      const int w = threadIdx.x + i * kThreads;
      if (w < kWin) next[i] = staged_window_row(p, tile.q0, tile.k0, kK, w);
    }
  }
  template <typename At>
  __device__ __forceinline__ void store(At&& at, int t) {
    if (!at(t).band) return;
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      const int w = threadIdx.x + i * kThreads;
      if (w < kWin) window(t)[w] = next[i];
    }
  }
};

// Calls f(mf, nf, e, keep) for every element of an accumulator tile [16 MF x 8 NF] whose row 0 is the
// absolute index row0 and column 0 col0 (both multiples of 16). kTrans: rows are keys, columns queries.
template <bool kTrans, int MF, int NF, typename F>
__device__ __forceinline__ void for_each_keep(const DropoutKey& key, uint32_t bh, int row0, int col0, F&& f) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int q = 0; q < NF / 2; ++q) {
      const uint32_t ra = row0 + mf * 16 + g;
      const uint32_t ca = col0 + q * 16 + 2 * t;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const Philox4 r = kTrans ? dropout_words(key, bh, ca + c, ra) : dropout_words(key, bh, ra, ca + c);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int w = kTrans ? 2 * half + hh : 2 * hh + half;
            f(mf, 2 * q + half, 2 * hh + c, word_keeps(key, r.w[w]));
          }
        }
      }
    }
  }
}

__device__ __forceinline__ DropoutKey load_dropout_key(const AttnParams& p) {
  if (p.philox == nullptr) return DropoutKey{0u, 0u, 0u, 0.f};
  return make_dropout_key(p.philox[0], p.philox[1], p.dropout_p);
}

}  // namespace deberta_fast
