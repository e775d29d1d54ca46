// The deterministic English word lists the synthetic tasks draw from: RULER's needle keys are
// "adjective-noun" pairs and its common-words list is plain words (RULER takes both from the
// wonderwords package; these are a few hundred common words of our own).
#pragma once

#include <string>
#include <vector>

namespace kvbench {

// About 300 common English adjectives, lower case, distinct.
const std::vector<std::string>& adjective_words();
// About 340 common English nouns, lower case, distinct, none also an adjective above.
const std::vector<std::string>& noun_words();

}  // namespace kvbench
