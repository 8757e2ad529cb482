"""bnjax: what does batch normalisation do to the gradient?"""
