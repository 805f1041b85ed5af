/* GroupNorm, plus an optional residual and ReLU, over channels-last float32 activations.
 *
 * Layout: x[b][s][c], s over the T*H*W positions, c over C channels; group g holds channels
 * [g*C/G, (g+1)*C/G). Statistics are summed in double. Forward:
 *     y = act((x - mean_g) * rstd_g * weight[c] + bias[c] + residual)
 * Backward takes dy, x, the saved y (its sign is ReLU's mask) and the saved mean and rstd; it writes
 * dx, and the per-sample sums that give dweight and dbias (summed over the batch by the caller).
 * The gradient of the residual is dy masked by ReLU, which the caller takes from dx's first pass.
 *
 * Each call handles samples [first, last): the caller splits the batch across threads.
 * Built on first use by fgmm_lib/models/group_norm.py (cc -O3 -march=native -shared).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Positions summed in float before each addition to the double totals. */
#define BLOCK 64

void group_norm_forward(const float *x, const float *weight, const float *bias, const float *residual,
                        float *y, float *mean_out, float *rstd_out, long first, long last, long positions,
                        long channels, long groups, double eps, int relu) {
    double *sum = malloc(sizeof(double) * channels);
    double *sumsq = malloc(sizeof(double) * channels);
    float *restrict scale = malloc(sizeof(float) * channels);
    float *restrict shift = malloc(sizeof(float) * channels);
    float *restrict part = malloc(sizeof(float) * channels);
    float *restrict partsq = malloc(sizeof(float) * channels);
    long per_group = channels / groups;
    for (long b = first; b < last; b++) {
        const float *xb = x + b * positions * channels;
        memset(sum, 0, sizeof(double) * channels);
        memset(sumsq, 0, sizeof(double) * channels);
        for (long start = 0; start < positions; start += BLOCK) {
            long stop = start + BLOCK < positions ? start + BLOCK : positions;
            memset(part, 0, sizeof(float) * channels);
            memset(partsq, 0, sizeof(float) * channels);
            for (long s = start; s < stop; s++) {
                const float *restrict row = xb + s * channels;
                for (long c = 0; c < channels; c++) {
                    part[c] += row[c];
                    partsq[c] += row[c] * row[c];
                }
            }
            for (long c = 0; c < channels; c++) {
                sum[c] += part[c];
                sumsq[c] += partsq[c];
            }
        }
        double count = (double)positions * per_group;
        for (long g = 0; g < groups; g++) {
            double s1 = 0, s2 = 0;
            for (long c = g * per_group; c < (g + 1) * per_group; c++) {
                s1 += sum[c];
                s2 += sumsq[c];
            }
            double mean = s1 / count;
            double var = s2 / count - mean * mean;
            if (var < 0) var = 0;
            double rstd = 1.0 / sqrt(var + eps);
            mean_out[b * groups + g] = (float)mean;
            rstd_out[b * groups + g] = (float)rstd;
            for (long c = g * per_group; c < (g + 1) * per_group; c++) {
                scale[c] = (float)(rstd * weight[c]);
                shift[c] = (float)(bias[c] - mean * rstd * weight[c]);
            }
        }
        float *yb = y + b * positions * channels;
        const float *rb = residual ? residual + b * positions * channels : NULL;
        for (long s = 0; s < positions; s++) {
            const float *restrict row = xb + s * channels;
            float *restrict out = yb + s * channels;
            if (rb) {
                const float *restrict res = rb + s * channels;
                for (long c = 0; c < channels; c++) out[c] = row[c] * scale[c] + shift[c] + res[c];
            } else {
                for (long c = 0; c < channels; c++) out[c] = row[c] * scale[c] + shift[c];
            }
            if (relu)
                for (long c = 0; c < channels; c++) out[c] = out[c] > 0.0f ? out[c] : 0.0f;
        }
    }
    free(sum);
    free(sumsq);
    free(scale);
    free(shift);
    free(part);
    free(partsq);
}

/* sum_dy[b][c] = sum_s g, sum_dyx[b][c] = sum_s g * x, with g = dy masked by ReLU (y > 0).
 * dx = a[c] * g + bx_g * x + c_g; grad_residual (if not NULL) = g. */
void group_norm_backward(const float *dy, const float *x, const float *y, const float *weight,
                         const float *mean_in, const float *rstd_in, float *dx, float *grad_residual,
                         double *sum_dy, double *sum_dyx, long first, long last, long positions, long channels,
                         long groups, int relu) {
    float *restrict a = malloc(sizeof(float) * channels);
    float *restrict bx = malloc(sizeof(float) * channels);
    float *restrict cc = malloc(sizeof(float) * channels);
    float *restrict part = malloc(sizeof(float) * channels);
    float *restrict partx = malloc(sizeof(float) * channels);
    long per_group = channels / groups;
    for (long b = first; b < last; b++) {
        long offset = b * positions * channels;
        double *sg = sum_dy + b * channels;
        double *sgx = sum_dyx + b * channels;
        memset(sg, 0, sizeof(double) * channels);
        memset(sgx, 0, sizeof(double) * channels);
        for (long start = 0; start < positions; start += BLOCK) {
            long stop = start + BLOCK < positions ? start + BLOCK : positions;
            memset(part, 0, sizeof(float) * channels);
            memset(partx, 0, sizeof(float) * channels);
            for (long s = start; s < stop; s++) {
                const float *restrict d = dy + offset + s * channels;
                const float *restrict xr = x + offset + s * channels;
                const float *restrict yr = y + offset + s * channels;
                for (long c = 0; c < channels; c++) {
                    float g = (!relu || yr[c] > 0.0f) ? d[c] : 0.0f;
                    part[c] += g;
                    partx[c] += g * xr[c];
                }
            }
            for (long c = 0; c < channels; c++) {
                sg[c] += part[c];
                sgx[c] += partx[c];
            }
        }
        double count = (double)positions * per_group;
        for (long g = 0; g < groups; g++) {
            double mean = mean_in[b * groups + g], rstd = rstd_in[b * groups + g];
            double A = 0, Bx = 0;
            for (long c = g * per_group; c < (g + 1) * per_group; c++) {
                A += weight[c] * sg[c];
                Bx += weight[c] * sgx[c];
            }
            double bcoef = -rstd * rstd * rstd * (Bx - mean * A) / count;
            double ccoef = -rstd * A / count - bcoef * mean;
            for (long c = g * per_group; c < (g + 1) * per_group; c++) {
                a[c] = (float)(rstd * weight[c]);
                bx[c] = (float)bcoef;
                cc[c] = (float)ccoef;
            }
        }
        for (long s = 0; s < positions; s++) {
            const float *restrict d = dy + offset + s * channels;
            const float *restrict xr = x + offset + s * channels;
            const float *restrict yr = y + offset + s * channels;
            float *restrict out = dx + offset + s * channels;
            if (relu) {
                for (long c = 0; c < channels; c++) {
                    float g = yr[c] > 0.0f ? d[c] : 0.0f;
                    out[c] = a[c] * g + bx[c] * xr[c] + cc[c];
                }
            } else {
                for (long c = 0; c < channels; c++) out[c] = a[c] * d[c] + bx[c] * xr[c] + cc[c];
            }
            if (grad_residual) {
                float *restrict gr = grad_residual + offset + s * channels;
                for (long c = 0; c < channels; c++) gr[c] = (!relu || yr[c] > 0.0f) ? d[c] : 0.0f;
            }
        }
    }
    free(a);
    free(bx);
    free(cc);
    free(part);
    free(partx);
}
