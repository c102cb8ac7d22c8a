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

// add_position_terms for the tile kind ``mode`` known at run time: one switch per tile.
template <bool kTrans, int MF, int NF, typename T>
DF_TERMS_FN void add_position_terms_any(int mode, float (&s)[MF][NF][4], const AttnParams& p, const T* c2p,
                                        const T* p2c, int row0, int col0, int lane, const float* col_term,
                                        const float (&row_hi)[MF][2], const float (&row_lo)[MF][2]) {
  switch (mode) {
    case kBand:
      add_position_terms<kBand, kTrans>(s, p, c2p, p2c, row0, col0, lane, col_term, row_hi, row_lo);
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
