// The cuda kernels' staged band slabs (DEBERTA_FAST_CUDA_BAND=staged, csrc/score_terms.h) on the host, for the
// kernels' own CTA tile shapes: every tile of a sequence staged chunk by chunk as StagedSlabs::stage does (slab slots
// no chunk fills hold NaN, so a read of one shows), then every warp's terms read from the slabs, lane by lane, against
// the gathering code (add_position_terms<kBand>) on the same tile, bit for bit. Run by tests/test_cuda_score_code.py,
// which builds it with the host's C++ compiler (no CUDA, no torch).
//
// stdin: N, 2S, then the position table (2N - 1 ints, table[i - j + N - 1]); then lines "qc kc warps trans chunk",
// one CTA tile shape each (qc queries x kc keys; the warps' rows are queries, or keys when trans). stdout, one line a
// shape: "shape qc kc warps trans chunk compared <elements> mismatched <elements> overflow <chunks>".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "score_terms.h"

using namespace deberta_fast;

namespace {

struct Run {
  long compared = 0, mismatched = 0, overflow = 0;
};

// A value for C2P / P2C element (row, col) of term t: distinct enough that a read of another element shows.
float term_value(int t, int row, int col) {
  const uint32_t h = (static_cast<uint32_t>(row) * 2654435761u) ^ (static_cast<uint32_t>(col) * 40503u) ^ (t * 97u);
  return static_cast<float>(h % 100003u) / 1024.0f - 48.0f;
}

template <int MF, int NF, bool kTrans>
void run_shape(const AttnParams& p, const std::vector<float>& c2p, const std::vector<float>& p2c, int qc, int kc,
               int warps, int chunk, Run& run) {
  std::vector<int> win(qc + kc);
  std::vector<float> col_term(8 * NF, 0.0f);
  const float row_hi[MF][2] = {}, row_lo[MF][2] = {};
  const int total = staged_c2p_chunks(qc, kc, chunk) + staged_p2c_chunks(qc, kc, chunk);
  for (int q0 = 0; q0 < p.N; q0 += qc) {
    for (int k0 = 0; k0 < p.N; k0 += kc) {
      for (int w = 0; w < qc + kc - 1; ++w) win[w] = staged_window_row(p, q0, k0, kc, w);
      std::vector<float> sc2p(static_cast<size_t>(qc) * (kc + chunk), NAN);
      std::vector<float> sp2c(static_cast<size_t>(kc) * (qc + chunk), NAN);
      for (int idx = 0; idx < total; ++idx) {
        StagedChunk ch;
        if (!staged_chunk(p, win.data(), q0, k0, qc, kc, chunk, true, true, idx, ch)) continue;
        std::vector<float>& slab = ch.p2c ? sp2c : sc2p;
        if (ch.dst < 0 || ch.dst + chunk > static_cast<int64_t>(slab.size())) {
          ++run.overflow;
          continue;
        }
        const float* src = (ch.p2c ? p2c : c2p).data() + ch.src;
        for (int e = 0; e < chunk; ++e) slab[ch.dst + e] = ch.valid ? src[e] : 0.0f;
      }
      for (int warp = 0; warp < warps; ++warp) {
        const int wr0 = warp * 16 * MF;
        const int row0 = kTrans ? k0 + wr0 : q0 + wr0, col0 = kTrans ? q0 : k0;
        for (int lane = 0; lane < 32; ++lane) {
          float staged[MF][NF][4], gathered[MF][NF][4];
          for_each_element<MF, NF>([&](int mf, int nf, int e) {
            staged[mf][nf][e] = gathered[mf][nf][e] = 0.25f * (mf + nf + e);
          });
          add_staged_band_terms<kTrans, MF, NF>(staged, p, q0, k0, qc, kc, chunk, wr0, lane, col_term.data(),
                                                win.data(), sc2p.data(), sp2c.data(), true, true);
          add_position_terms<kBand, kTrans>(gathered, p, c2p.data(), p2c.data(), row0, col0, lane, col_term.data(),
                                            row_hi, row_lo);
          for_each_element<MF, NF>([&](int mf, int nf, int e) {
            ++run.compared;
            // NaN (an unfilled slot read) never compares equal
            if (!(staged[mf][nf][e] == gathered[mf][nf][e])) ++run.mismatched;
          });
        }
      }
    }
  }
}

template <int MF, bool kTrans>
bool dispatch_nf(int nf, const AttnParams& p, const std::vector<float>& c2p, const std::vector<float>& p2c, int qc,
                 int kc, int warps, int chunk, Run& run) {
  switch (nf) {
    case 2: run_shape<MF, 2, kTrans>(p, c2p, p2c, qc, kc, warps, chunk, run); return true;
    case 4: run_shape<MF, 4, kTrans>(p, c2p, p2c, qc, kc, warps, chunk, run); return true;
    case 8: run_shape<MF, 8, kTrans>(p, c2p, p2c, qc, kc, warps, chunk, run); return true;
    default: return false;
  }
}

}  // namespace

int main() {
  int n = 0, two_s = 0;
  if (std::scanf("%d %d", &n, &two_s) != 2 || n < 1 || two_s < 1) {
    std::fprintf(stderr, "expected N and 2S\n");
    return 2;
  }
  std::vector<int32_t> table(2 * n - 1);
  for (auto& d : table) {
    if (std::scanf("%d", &d) != 1 || d < 0 || d >= two_s) {
      std::fprintf(stderr, "expected 2N - 1 table rows in [0, 2S)\n");
      return 2;
    }
  }
  std::vector<float> c2p(static_cast<size_t>(n) * two_s), p2c(c2p.size());
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < two_s; ++c) {
      c2p[static_cast<size_t>(r) * two_s + c] = term_value(1, r, c);
      p2c[static_cast<size_t>(r) * two_s + c] = term_value(2, r, c);
    }
  }
  AttnParams p;
  p.N = n;
  p.two_s = two_s;
  p.table = table.data();
  int qc, kc, warps, trans, chunk;
  while (std::scanf("%d %d %d %d %d", &qc, &kc, &warps, &trans, &chunk) == 5) {
    const int rows = trans ? kc : qc, cols = trans ? qc : kc;
    const int mf = rows / (16 * warps), nf = cols / 8;
    if (mf * 16 * warps != rows || nf * 8 != cols || two_s % chunk != 0) {
      std::fprintf(stderr, "bad shape %d %d %d %d %d\n", qc, kc, warps, trans, chunk);
      return 2;
    }
    Run run;
    bool known = false;
    if (mf == 1) {
      known = trans ? dispatch_nf<1, true>(nf, p, c2p, p2c, qc, kc, warps, chunk, run)
                    : dispatch_nf<1, false>(nf, p, c2p, p2c, qc, kc, warps, chunk, run);
    } else if (mf == 2) {
      known = trans ? dispatch_nf<2, true>(nf, p, c2p, p2c, qc, kc, warps, chunk, run)
                    : dispatch_nf<2, false>(nf, p, c2p, p2c, qc, kc, warps, chunk, run);
    }
    if (!known) {
      std::fprintf(stderr, "no instantiation for %d x %d fragments\n", mf, nf);
      return 2;
    }
    std::printf("shape %d %d %d %d %d compared %ld mismatched %ld overflow %ld\n", qc, kc, warps, trans, chunk,
                run.compared, run.mismatched, run.overflow);
  }
  return 0;
}
