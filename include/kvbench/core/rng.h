// Seeded random numbers with a fixed algorithm (xoshiro256**), so results are reproducible
// across compilers and standard libraries (std:: distributions are implementation-defined).
#pragma once

#include <cstdint>

namespace kvbench {

class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  // Uniform integer in [0, n), unbiased; n > 0.
  uint64_t below(uint64_t n);
  // Uniform double in [0, 1).
  double uniform();

 private:
  uint64_t s_[4];
};

}  // namespace kvbench
