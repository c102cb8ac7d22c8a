// The position terms of a score tile and the position-slot sums of a dS tile, written once per tile kind
// (host and device: the kernels use them, and a CPU test hook in attention.cpp runs them lane by lane).
//
// A warp's tile [16 MF rows x 8 NF cols] is held in the mma.sync accumulator layout (tile.cuh): with g = lane / 4
// and t = lane % 4, element e of acc[mf][nf] is row mf * 16 + g + 8 * (e >> 1), col nf * 8 + 2 * t + (e & 1).
// Absolute indices: row row0 + that, column col0 + that; kTrans: rows are keys and columns queries (the dK/dV
// kernel), else rows are queries.
//
// The kind is a template argument (one dispatch per tile: add_position_terms_any, add_slot_sums_any), and a band
// tile issues all its index loads, then all its gathers, without branches: addresses clamped into the sequence,
// out-of-range pairs zeroed after. Float operations per pair: (score + column term) + position term. This replaced
// code that tested the kind at every pair, where each band pair's index load and two gathers sat behind a branch
// of their own and a tile's loads ran as one dependent chain after another: on an H100 the forward took 3.15 ms
// with that code and 1.78 ms with this one, forward+backward 13.4 and 8.95 ms (bf16, N 2048, B*N 16384, H 12,
// D 64; bench/results/h100_2026-11-23/).
#pragma once

#include <cstdint>

#include "params.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define DF_TERMS_FN __host__ __device__ __forceinline__
#define DF_UNROLL _Pragma("unroll")
#else
#define DF_TERMS_FN inline
#define DF_UNROLL
#endif

namespace deberta_fast {

// Tile kinds. For a tile of queries [q0, q0 + qc) and keys [k0, k0 + kc) every pair has
//   SAT_HI: i - j >= r_hi  (position row 2S - 1: the c2p term is one value per query, p2c one per key),
//   SAT_LO: i - j <= -r_lo (row 0), BAND otherwise (gathers through the table), PLAIN without position terms.
enum TileMode : int { kPlain = 0, kBand = 1, kSatHi = 2, kSatLo = 3 };

DF_TERMS_FN int tile_mode(const AttnParams& p, bool has_pos, int q0, int qc, int k0, int kc) {
  if (!has_pos) return kPlain;
  if (q0 - (k0 + kc - 1) >= p.r_hi) return kSatHi;
  if ((q0 + qc - 1) - k0 <= -p.r_lo) return kSatLo;
  return kBand;
}

// A read-only load (the read-only data cache on the device).
template <typename T>
DF_TERMS_FN T load_ro(const T* ptr) {
#if defined(__CUDA_ARCH__)
  return __ldg(ptr);
#else
  return *ptr;
#endif
}

DF_TERMS_FN float term_to_float(float x) { return x; }
DF_TERMS_FN float term_from_float(float x, float*) { return x; }
#if defined(__CUDACC__)
DF_TERMS_FN float term_to_float(__half x) { return __half2float(x); }
DF_TERMS_FN float term_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
DF_TERMS_FN __half term_from_float(float x, __half*) { return __float2half_rn(x); }
DF_TERMS_FN __nv_bfloat16 term_from_float(float x, __nv_bfloat16*) { return __float2bfloat16_rn(x); }
#endif

DF_TERMS_FN int min_int(int a, int b) { return a < b ? a : b; }

// Calls f(mf, nf, e) for every element of a warp's accumulator tile [16 MF x 8 NF], unrolled on the device.
template <int MF, int NF, typename F>
DF_TERMS_FN void for_each_element(F&& f) {
  DF_UNROLL
  for (int mf = 0; mf < MF; ++mf)
    DF_UNROLL
    for (int nf = 0; nf < NF; ++nf)
      DF_UNROLL
      for (int e = 0; e < 4; ++e) f(mf, nf, e);
}

// Where element e of acc[mf][nf] of ``lane`` sits in the warp's tile (row, column; both tile-relative).
struct TilePlace {
  int row, col;
};
DF_TERMS_FN TilePlace tile_place(int lane, int mf, int nf, int e) {
  return TilePlace{mf * 16 + lane / 4 + 8 * (e >> 1), nf * 8 + 2 * (lane % 4) + (e & 1)};
}

// s[mf][nf][e] = (s + col_term[c]) + position term of the pair, for a tile of kind kMode: nothing (PLAIN),
// row_hi / row_lo of the row (SAT_HI / SAT_LO: the row's own term at row 2S - 1 / 0; the column's is in
// col_term), or c2p[i, d] + p2c[j, d] with d = table[i - j + N - 1] (BAND; 0 for pairs beyond N).
// c is the tile column; c2p / p2c are this (batch, head)'s [N, 2S] rows or null.
template <int kMode, bool kTrans, int MF, int NF, typename T>
DF_TERMS_FN void add_position_terms(float (&s)[MF][NF][4], const AttnParams& p, const T* c2p, const T* p2c,
                                    int row0, int col0, int lane, const float* col_term,
                                    const float (&row_hi)[MF][2], const float (&row_lo)[MF][2]) {
  if constexpr (kMode == kBand) {
    const int N = p.N;
    // (query, key) of an element, absolute; beyond N for the tile's pairs outside the sequence
    auto pair_of = [&](int mf, int nf, int e, int& qi, int& kj) {
      const TilePlace at = tile_place(lane, mf, nf, e);
      qi = kTrans ? col0 + at.col : row0 + at.row;
      kj = kTrans ? row0 + at.row : col0 + at.col;
    };
    int d[MF][NF][4];  // every index load of the tile first, then every gather: no load waits on another's use
    for_each_element<MF, NF>([&](int mf, int nf, int e) {
      int qi, kj;
      pair_of(mf, nf, e, qi, kj);
      d[mf][nf][e] = load_ro(p.table + (min_int(qi, N - 1) - min_int(kj, N - 1) + N - 1));
    });
    for_each_element<MF, NF>([&](int mf, int nf, int e) {
      int qi, kj;
      pair_of(mf, nf, e, qi, kj);
      const int64_t qrow = min_int(qi, N - 1), krow = min_int(kj, N - 1);
      float b = 0.f;
      if (c2p != nullptr) b += term_to_float(load_ro(c2p + qrow * p.two_s + d[mf][nf][e]));
      if (p2c != nullptr) b += term_to_float(load_ro(p2c + krow * p.two_s + d[mf][nf][e]));
      if (qi >= N || kj >= N) b = 0.f;
      s[mf][nf][e] = (s[mf][nf][e] + col_term[tile_place(lane, mf, nf, e).col]) + b;
    });
  } else {
    for_each_element<MF, NF>([&](int mf, int nf, int e) {
      float x = s[mf][nf][e] + col_term[tile_place(lane, mf, nf, e).col];
      if constexpr (kMode == kSatHi) x += row_hi[mf][e >> 1];
      if constexpr (kMode == kSatLo) x += row_lo[mf][e >> 1];
      s[mf][nf][e] = x;
    });
  }
}

// add_position_terms for the tile kind ``mode`` known at run time: one switch per tile. kBandCase false: a caller
// that handles band tiles itself (the staged slabs) never passes kBand, and the gathers are not compiled.
template <bool kTrans, bool kBandCase = true, int MF, int NF, typename T>
DF_TERMS_FN void add_position_terms_any(int mode, float (&s)[MF][NF][4], const AttnParams& p, const T* c2p,
                                        const T* p2c, int row0, int col0, int lane, const float* col_term,
                                        const float (&row_hi)[MF][2], const float (&row_lo)[MF][2]) {
  switch (mode) {
    case kBand:
      if constexpr (kBandCase) {
        add_position_terms<kBand, kTrans>(s, p, c2p, p2c, row0, col0, lane, col_term, row_hi, row_lo);
      }
      break;
    case kSatHi:
      add_position_terms<kSatHi, kTrans>(s, p, c2p, p2c, row0, col0, lane, col_term, row_hi, row_lo);
      break;
    case kSatLo:
      add_position_terms<kSatLo, kTrans>(s, p, c2p, p2c, row0, col0, lane, col_term, row_hi, row_lo);
      break;
    default:
      add_position_terms<kPlain, kTrans>(s, p, c2p, p2c, row0, col0, lane, col_term, row_hi, row_lo);
  }
}

// ------------------------------------------------------------------------------------------------------
// Staged band terms (the band tiles of the three kernels under DEBERTA_FAST_CUDA_BAND=staged): instead of gathering
// C2P[i, d] and P2C[j, d] from global memory pair by pair, a band tile's slabs of both are copied into shared
// memory a tile ahead (16-byte cp.async chunks, coalesced, their latency behind the previous tile's compute) and
// the pairs read them there.
//
// For the CTA tile of queries [q0, q0 + qc) and keys [k0, k0 + kc) the pairs' distances x = i - j span qc + kc - 1
// values; the window holds their rows, win[w] = d(x0 + w) with x0 = q0 - (k0 + kc - 1) (table index clamped into
// [0, 2N - 2]: only pairs beyond N reach past it). d is nondecreasing in x with steps of at most 1, so query row
// q0 + r needs the <= kc consecutive C2P columns from win[r] (its pair with the tile's last key) on, and key k0 + c
// the <= qc consecutive P2C columns from win[kc - 1 - c] (its pair with the first query) on. Each slab row starts
// at that column rounded down to a chunk (kChunk elements, 16 bytes): the C2P slab is [qc][kc + kChunk], the P2C
// slab [kc][qc + kChunk]; chunks past the row's 2S columns or outside the sequence are zero-filled (never read for
// a pair inside it).

// Row counts of the staged slabs and the chunks that fill them.
constexpr DF_TERMS_FN int staged_c2p_chunks(int qc, int kc, int chunk) { return qc * (kc / chunk + 1); }
constexpr DF_TERMS_FN int staged_p2c_chunks(int qc, int kc, int chunk) { return kc * (qc / chunk + 1); }

// win[w] of the tile (q0, k0, kc), w in [0, qc + kc - 1).
DF_TERMS_FN int staged_window_row(const AttnParams& p, int q0, int k0, int kc, int w) {
  int idx = q0 - (k0 + kc - 1) + w + p.N - 1;
  idx = idx < 0 ? 0 : (idx > 2 * p.N - 2 ? 2 * p.N - 2 : idx);
  return load_ro(p.table + idx);
}

// Chunk ``idx`` of a band tile's staging: the C2P chunks first (row-major over [qc][kc / chunk + 1]), then the P2C
// chunks ([kc][qc / chunk + 1]). Sets the destination (element offset into the C2P slab or the P2C slab), the
// source (element offset into this (batch, head)'s [N, 2S] C2P or P2C) and whether the source exists (else the
// chunk is zero-filled). Returns false for an absent term's chunk (nothing to copy).
struct StagedChunk {
  bool p2c;          // which slab
  int64_t dst, src;  // element offsets
  bool valid;        // the source chunk lies in the row's 2S columns and the row in the sequence
};
DF_TERMS_FN bool staged_chunk(const AttnParams& p, const int* win, int q0, int k0, int qc, int kc, int chunk,
                              bool has_c2p, bool has_p2c, int idx, StagedChunk& out) {
  const int c2p_chunks = staged_c2p_chunks(qc, kc, chunk);
  out.p2c = idx >= c2p_chunks;
  if (!out.p2c) {
    if (!has_c2p) return false;
    const int per_row = kc / chunk + 1, r = idx / per_row, ch = idx % per_row;
    const int col = (win[r] / chunk) * chunk + ch * chunk;
    out.dst = static_cast<int64_t>(r) * (kc + chunk) + ch * chunk;
    out.valid = q0 + r < p.N && col < p.two_s;
    out.src = out.valid ? static_cast<int64_t>(q0 + r) * p.two_s + col : 0;
    return true;
  }
  if (!has_p2c) return false;
  idx -= c2p_chunks;
  const int per_row = qc / chunk + 1, c = idx / per_row, ch = idx % per_row;
  const int col = (win[kc - 1 - c] / chunk) * chunk + ch * chunk;
  out.dst = static_cast<int64_t>(c) * (qc + chunk) + ch * chunk;
  out.valid = k0 + c < p.N && col < p.two_s;
  out.src = out.valid ? static_cast<int64_t>(k0 + c) * p.two_s + col : 0;
  return true;
}

// add_position_terms<kBand, kTrans> from the staged slabs: s[mf][nf][e] = (s + col_term[col]) + (C2P[i, d] +
// P2C[j, d]) with the same additions in the same order (0 for pairs beyond N). The warp's rows start at row wr0 of the
// CTA tile (q0, k0, qc, kc): at query q0 + wr0, or with kTrans (rows are keys) at key k0 + wr0; win, sc2p, sp2c: the
// tile's window and slabs (an absent term's slab is not read).
template <bool kTrans, int MF, int NF, typename T>
DF_TERMS_FN void add_staged_band_terms(float (&s)[MF][NF][4], const AttnParams& p, int q0, int k0, int qc, int kc,
                                       int chunk, int wr0, int lane, const float* col_term, const int* win,
                                       const T* sc2p, const T* sp2c, bool has_c2p, bool has_p2c) {
  for_each_element<MF, NF>([&](int mf, int nf, int e) {
    const TilePlace at = tile_place(lane, mf, nf, e);
    const int r = kTrans ? at.col : wr0 + at.row;  // the pair's query and key, relative to the CTA tile
    const int c = kTrans ? wr0 + at.row : at.col;
    const bool in = q0 + r < p.N && k0 + c < p.N;
    const int d = win[r - c + kc - 1];
    float b = 0.f;
    if (has_c2p) {
      const int off = in ? d - (win[r] / chunk) * chunk : 0;
      b += term_to_float(sc2p[r * (kc + chunk) + off]);
    }
    if (has_p2c) {
      const int off = in ? d - (win[kc - 1 - c] / chunk) * chunk : 0;
      b += term_to_float(sp2c[c * (qc + chunk) + off]);
    }
    if (!in) b = 0.f;
    s[mf][nf][e] = (s[mf][nf][e] + col_term[at.col]) + b;
  });
}

// The position-slot bookkeeping of a dS tile for the term whose content side is the tile's rows (the backward's
// p2c in dK/dV, c2p in dQ): a row's pairs at row 2S - 1 of the position table summed into hi[mf][hh], those at row
// 0 into lo (this lane's columns; the quad's four lanes hold a row between them), and each band pair's dS stored at
// its distance, band[r * band_w + (i - j + r_lo - 1)] (r the absolute row; pairs beyond N are not stored).
// ds in the accumulator layout; band: this (batch, head)'s band rows ([N][band_w], type T).
template <int kMode, bool kTrans, int MF, int NF, typename T>
DF_TERMS_FN void add_slot_sums(float (&hi)[MF][2], float (&lo)[MF][2], const AttnParams& p, const float (&ds)[MF][NF][4],
                               int row0, int col0, int lane, T* band, int band_w) {
  const int g = lane / 4, t = lane % 4;
  DF_UNROLL
  for (int mf = 0; mf < MF; ++mf) {
    DF_UNROLL
    for (int hh = 0; hh < 2; ++hh) {
      const int r = row0 + mf * 16 + g + 8 * hh;
      float sum_hi = 0.f, sum_lo = 0.f;
      DF_UNROLL
      for (int nf = 0; nf < NF; ++nf) {
        DF_UNROLL
        for (int c = 0; c < 2; ++c) {
          const float x = ds[mf][nf][2 * hh + c];
          if constexpr (kMode == kSatHi) {
            sum_hi += x;
          } else if constexpr (kMode == kSatLo) {
            sum_lo += x;
          } else if constexpr (kMode == kBand) {
            const int col = col0 + nf * 8 + 2 * t + c;
            const int qi = kTrans ? col : r, kj = kTrans ? r : col;
            const int dist = qi - kj;
            const bool at_hi = dist >= p.r_hi, at_lo = dist <= -p.r_lo;
            sum_hi += at_hi ? x : 0.f;  // + 0 leaves a sum unchanged: the same sums as adding only the pairs in it
            sum_lo += at_lo ? x : 0.f;
            if (!at_hi && !at_lo && qi < p.N && kj < p.N) {
              band[static_cast<int64_t>(r) * band_w + (dist + p.r_lo - 1)] = term_from_float(x, band);
            }
          }
        }
      }
      hi[mf][hh] += sum_hi;
      lo[mf][hh] += sum_lo;
    }
  }
}

// add_slot_sums for the tile kind ``mode`` known at run time (PLAIN tiles have no slots: nothing to do).
template <bool kTrans, int MF, int NF, typename T>
DF_TERMS_FN void add_slot_sums_any(int mode, float (&hi)[MF][2], float (&lo)[MF][2], const AttnParams& p,
                                   const float (&ds)[MF][NF][4], int row0, int col0, int lane, T* band, int band_w) {
  switch (mode) {
    case kBand:
      add_slot_sums<kBand, kTrans>(hi, lo, p, ds, row0, col0, lane, band, band_w);
      break;
    case kSatHi:
      add_slot_sums<kSatHi, kTrans>(hi, lo, p, ds, row0, col0, lane, band, band_w);
      break;
    case kSatLo:
      add_slot_sums<kSatLo, kTrans>(hi, lo, p, ds, row0, col0, lane, band, band_w);
      break;
    default:
      break;
  }
}

}  // namespace deberta_fast
