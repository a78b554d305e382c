"""Energy-based box refinement for MMDetection."""
