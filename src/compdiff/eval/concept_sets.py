"""Moved to ``compdiff.world.concept_sets`` (concept sets are world data: layer 7, below ``eval``).

This module re-exports its names so that existing imports keep working; new code imports
from ``compdiff.world.concept_sets``.
"""
from compdiff.world.concept_sets import (MAX_DRAWS_PER_SET, REGION_SIZE, SETS_STREAM, SETS_VERSION, Box,
                                         ConceptSet, Sets, check_regions, concept_sets, format_box,
                                         has_regions, inside, region_box, region_tasks)

__all__ = ["Sets", "SETS_VERSION", "SETS_STREAM", "MAX_DRAWS_PER_SET", "REGION_SIZE", "Box", "ConceptSet",
           "concept_sets", "has_regions", "region_tasks", "check_regions", "region_box", "format_box", "inside"]
